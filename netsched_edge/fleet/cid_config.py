"""The fleet's QUIC-LB configuration in etcd, shared by its hosts and its forwarder.

`quic-lb` holds the config rotation codepoint, the server ID and nonce lengths
and the 16-byte AES key (made by the first host that finds none). A host's
CIDs carry its member server ID ‖ its worker index (`for_host`, the
`FleetCids` of `netsched_edge.workers`); the forwarder recovers both from a
DCID (`locate`) and sends the packet to that host's worker port.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from netsched_client.proto.quic_lb import KEY_BYTES, QuicLbScheme

from ..workers import FleetCids
from .etcd import Compare, Etcd, EtcdError, Put
from .layout import Layout

WORKER_ID_BYTES = 1  # the last octet of the server ID: the worker index


@dataclass(frozen=True, slots=True)
class FleetCidConfig:
    key: bytes
    config_rotation: int = 0
    server_id_length: int = 2  # host ID (1 octet: membership's max_server_id 255) + worker
    nonce_length: int = 5  # 8-byte CIDs, what the edge parses today (docs/FLEET.md)
    scheme: QuicLbScheme = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.server_id_length <= WORKER_ID_BYTES:
            raise ValueError("the server ID needs a host part before the worker octet")
        scheme = QuicLbScheme(
            self.server_id_length, self.nonce_length, self.config_rotation, self.key
        )
        object.__setattr__(self, "scheme", scheme)

    @property
    def host_id_bytes(self) -> int:
        return self.server_id_length - WORKER_ID_BYTES

    def for_host(self, server_id: int) -> FleetCids:
        return FleetCids(
            host_server_id=server_id.to_bytes(self.host_id_bytes, "big"),
            key=self.key,
            config_rotation=self.config_rotation,
            cid_length=self.scheme.cid_length,
        )

    def locate(self, cid: bytes) -> tuple[int, int] | None:
        """(host server ID, worker index) a CID of this configuration names, else None."""
        server_id = self.scheme.server_id(cid)
        if server_id is None:
            return None
        return int.from_bytes(server_id[:-WORKER_ID_BYTES], "big"), server_id[-1]

    def encode(self) -> bytes:
        return json.dumps(
            {
                "config_rotation": self.config_rotation,
                "server_id_length": self.server_id_length,
                "nonce_length": self.nonce_length,
                "key": self.key.hex(),
            }
        ).encode()

    @classmethod
    def decode(cls, data: bytes, source: str) -> FleetCidConfig:
        try:
            fields = json.loads(data)
            return cls(
                key=bytes.fromhex(fields["key"]),
                config_rotation=int(fields["config_rotation"]),
                server_id_length=int(fields["server_id_length"]),
                nonce_length=int(fields["nonce_length"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise EtcdError(f"{source}: not a QUIC-LB configuration ({exc})") from None


async def ensure_cid_config(etcd: Etcd, layout: Layout) -> FleetCidConfig:
    """The fleet's QUIC-LB configuration, made now if it has none."""
    made = FleetCidConfig(key=os.urandom(KEY_BYTES))
    await etcd.txn([Compare.absent(layout.quic_lb)], [Put(layout.quic_lb, made.encode())])
    kv = await etcd.get(layout.quic_lb)
    if kv is None:
        raise EtcdError(f"etcd:{layout.quic_lb}: deleted while being read")
    return FleetCidConfig.decode(kv.value, f"etcd:{layout.quic_lb}")
