"""HelloRetryRequest at the edge (interop issue #4: picoquic offers a post-quantum share only).

The TLS layer alone (sans-IO): which hellos get a retry and what it says. Then
picoquic itself (aiopquic 0.6.1, picotls), the interop suite's peer, run in its
own venv when installed: a client whose first share is X25519MLKEM768 fetches a
file from the edge over real UDP on loopback, so the whole retried handshake,
transcript included, is checked by an independent TLS stack.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from aioquic import tls
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from cryptography.hazmat.primitives.asymmetric import x25519

from interop.peers import default_cache
from interop.peers.picoquic import Picoquic
from netsched_edge.tls import (
    HELLO_RETRY_RANDOM,
    HelloRetryContext,
    enable_hello_retry,
    generate_self_signed,
)

X25519MLKEM768 = 0x11EC  # no aioquic support
SESSION_ID = bytes(range(32))


def _share(group: int) -> bytes:
    if group == tls.Group.X25519:
        return x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
    return os.urandom(32)


def client_hello(shares: list[int], groups: list[int]) -> bytes:
    """A QUIC-like ClientHello; its x25519 share is a real key, the others random bytes."""
    hello = tls.ClientHello(
        random=os.urandom(32),
        legacy_session_id=SESSION_ID,
        cipher_suites=[
            tls.CipherSuite.CHACHA20_POLY1305_SHA256,
            tls.CipherSuite.AES_128_GCM_SHA256,
        ],
        legacy_compression_methods=[tls.CompressionMethod.NULL],
        alpn_protocols=["hq-interop"],
        key_share=[(group, _share(group)) for group in shares],
        psk_key_exchange_modes=[tls.PskKeyExchangeMode.PSK_DHE_KE],
        signature_algorithms=[tls.SignatureAlgorithm.ECDSA_SECP256R1_SHA256],
        supported_groups=groups,
        supported_versions=[tls.TLS_VERSION_1_3],
    )
    buf = Buffer(capacity=4096)
    tls.push_client_hello(buf, hello)
    return buf.data


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> QuicConfiguration:
    configuration = QuicConfiguration(is_client=False)
    pair = generate_self_signed(tmp_path_factory.mktemp("hrr-certs"))
    configuration.load_cert_chain(pair.certificate, pair.private_key)
    return configuration


@pytest.fixture
def server(credentials: QuicConfiguration) -> tls.Context:
    context = tls.Context(is_client=False, alpn_protocols=["hq-interop"])
    context.certificate = credentials.certificate
    context.certificate_private_key = credentials.private_key
    enable_hello_retry(context)
    return context


def handle(context: tls.Context, message: bytes) -> bytes:
    """What the server writes into the Initial epoch for `message`."""
    buffers = {epoch: Buffer(capacity=4096) for epoch in tls.Epoch}
    context.handle_message(message, buffers)
    return buffers[tls.Epoch.INITIAL].data


def test_hello_without_usable_share_gets_one_retry_for_a_listed_group(server: tls.Context) -> None:
    context = server
    assert isinstance(context, HelloRetryContext)
    retry = handle(context, client_hello([X25519MLKEM768], [X25519MLKEM768, tls.Group.X25519]))
    assert retry[0] == tls.HandshakeType.SERVER_HELLO
    assert retry[6:38] == HELLO_RETRY_RANDOM
    assert retry[38] == len(SESSION_ID) and retry[39:71] == SESSION_ID  # echoed
    # The server's preferred suite among the offered ones, then compression NULL.
    assert retry[71:74] == b"\x13\x01\x00"
    assert b"\x00\x2b\x00\x02\x03\x04" in retry  # supported_versions: TLS 1.3
    assert retry.endswith(b"\x00\x33\x00\x02\x00\x1d")  # key_share: the group alone, x25519
    assert context.state == tls.State.SERVER_EXPECT_CLIENT_HELLO
    # Only one retry: a second hello still without a usable share fails.
    with pytest.raises(tls.AlertHandshakeFailure, match="key share"):
        handle(context, client_hello([X25519MLKEM768], [X25519MLKEM768, tls.Group.X25519]))


@pytest.mark.parametrize(
    ("shares", "groups"),
    [
        ([X25519MLKEM768], [X25519MLKEM768]),  # nothing to ask for
        ([X25519MLKEM768], [X25519MLKEM768, 0x0100]),  # ffdhe2048: not ours either
    ],
)
def test_no_retry_without_a_common_group(
    server: tls.Context, shares: list[int], groups: list[int]
) -> None:
    with pytest.raises(tls.AlertHandshakeFailure, match="key share"):
        handle(server, client_hello(shares, groups))


def test_usable_share_among_others_needs_no_retry(server: tls.Context) -> None:
    hello = client_hello([X25519MLKEM768, tls.Group.X25519], [X25519MLKEM768, tls.Group.X25519])
    server_hello = handle(server, hello)
    assert server_hello[0] == tls.HandshakeType.SERVER_HELLO
    assert server_hello[6:38] != HELLO_RETRY_RANDOM
    assert server.state == tls.State.SERVER_EXPECT_FINISHED


def test_only_server_contexts_take_retries() -> None:
    with pytest.raises(ValueError, match="client"):
        enable_hello_retry(tls.Context(is_client=True))


# ---------------------------------------------------------------- picoquic, for real

PICOQUIC_CLIENT = """
import asyncio, sys
from aiopquic.asyncio import connect
from aiopquic.asyncio.protocol import QuicConnectionProtocol
from aiopquic.quic.configuration import QuicConfiguration
from aiopquic.quic.events import ConnectionTerminated, StreamDataReceived

class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.body = bytearray()
        self.done = asyncio.get_running_loop().create_future()

    def quic_event_received(self, event):
        if isinstance(event, StreamDataReceived):
            self.body += bytes(event.data)
            if event.end_stream and not self.done.done():
                self.done.set_result(bytes(self.body))
        elif isinstance(event, ConnectionTerminated) and not self.done.done():
            self.done.set_exception(ConnectionError(event.reason_phrase))

async def main(port, ca, groups):
    config = QuicConfiguration(is_client=True, alpn_protocols=["hq-interop"])
    config.load_verify_locations(ca)
    config.server_name = "localhost"
    config.key_exchange_groups = groups
    async with connect("127.0.0.1", port, configuration=config, create_protocol=Client) as client:
        stream_id = client._quic.get_next_available_stream_id()
        request = b"GET /hello.txt\\r\\n"
        await client._quic.send_stream_data_drained(stream_id, request, end_stream=True)
        sys.stdout.buffer.write(await client.done)

groups = [int(g) for g in sys.argv[3:]]
asyncio.run(asyncio.wait_for(main(int(sys.argv[1]), sys.argv[2], groups), 20))
"""


@pytest.fixture(scope="module")
def picoquic_python() -> Path:
    peer = Picoquic(default_cache())
    if peer.status() is not None:
        pytest.skip("picoquic peer not installed (python -m interop setup --peers picoquic)")
    return peer.home / "venv" / "bin" / "python"


@pytest.mark.parametrize("classic", [tls.Group.X25519, tls.Group.SECP256R1])
async def test_picoquic_with_post_quantum_share_first_gets_its_file(
    start_edge, www: Path, picoquic_python: Path, classic: tls.Group
) -> None:
    edge = await start_edge(www=www, alpn=("hq-interop",))
    groups = [str(X25519MLKEM768), str(int(classic))]
    process = await asyncio.create_subprocess_exec(
        str(picoquic_python),
        "-c",
        PICOQUIC_CLIENT,
        str(edge.port),
        str(edge.ca_certificate),
        *groups,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    assert out == (www / "hello.txt").read_bytes()
