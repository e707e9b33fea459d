"""An async etcd v3 client over etcd's JSON gateway (docs/FLEET.md says why).

The gateway maps etcd's gRPC API to POST requests with JSON bodies: keys and
values are base64, 64-bit integers are decimal strings, and fields at their
default value (0, false, PUT) are left out of answers. This module turns that
into typed values: `KeyValue`, transactions from `Compare` and `Put`/`Get`/
`Delete`, leases (`KeptLease` keeps one alive) and watches (`watch`, an async
context manager over batches of `WatchEvent`).

Errors: `EtcdUnavailable` when no answer came (refused, timed out, cut), and
`EtcdError` when etcd answered with one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx

log = logging.getLogger("netsched.edge.fleet")


class EtcdError(RuntimeError):
    """etcd answered with an error (or something that is not its JSON)."""


class EtcdUnavailable(EtcdError):
    """No answer from etcd: refused, timed out, or the connection broke."""


class LeaseNotFound(EtcdError):
    """The lease named expired or was revoked."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyValue:
        return cls(
            key=_unb64(data["key"]).decode(),
            value=_unb64(data.get("value", "")),
            create_revision=int(data.get("create_revision", 0)),
            mod_revision=int(data.get("mod_revision", 0)),
            lease=int(data.get("lease", 0)),
        )


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a transaction (etcd compares a missing key's revisions as 0)."""

    key: str
    target: Literal["CREATE", "MOD", "VALUE"]
    operand: int | bytes
    result: Literal["EQUAL", "NOT_EQUAL", "GREATER", "LESS"] = "EQUAL"

    @classmethod
    def absent(cls, key: str) -> Compare:
        return cls(key, "CREATE", 0)

    @classmethod
    def unchanged(cls, key: str, mod_revision: int) -> Compare:
        """The key is as it was read (mod_revision 0: it still does not exist)."""
        return cls(key, "MOD", mod_revision)

    @classmethod
    def value_is(cls, key: str, value: bytes) -> Compare:
        return cls(key, "VALUE", value)

    def to_json(self) -> dict[str, Any]:
        field = {"CREATE": "create_revision", "MOD": "mod_revision", "VALUE": "value"}[self.target]
        operand = _b64(self.operand) if isinstance(self.operand, bytes) else str(self.operand)
        return {"key": _b64(self.key), "target": self.target, "result": self.result, field: operand}


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    lease: int = 0

    def to_json(self) -> dict[str, Any]:
        body = {"key": _b64(self.key), "value": _b64(self.value), "lease": str(self.lease)}
        return {"request_put": body}


@dataclass(frozen=True, slots=True)
class Get:
    key: str
    prefix: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"request_range": _range(self.key, self.prefix)}


@dataclass(frozen=True, slots=True)
class Delete:
    key: str
    prefix: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"request_delete_range": _range(self.key, self.prefix)}


Operation = Put | Get | Delete


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    ranges: list[list[KeyValue]]  # what each Get of the branch taken found, in order


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    kv: KeyValue  # for a delete: the key, an empty value, the deletion's revision


class Etcd:
    """An etcd cluster through its members' JSON gateway under /v3/.

    `endpoints`: client URLs ("http://host:port"), one or a comma-separated list.
    Calls go to one member; when it does not answer, the call is tried on the
    next ones in turn, and the first that answers serves the calls after it.
    `timeout` bounds every call, and a watch's connection, but not a watch's wait
    for events (a silent network partition is noticed by the lease renewals).
    """

    def __init__(self, endpoints: str, *, timeout: float = 2.0) -> None:
        self.endpoints = [url.strip().rstrip("/") for url in endpoints.split(",") if url.strip()]
        if not self.endpoints:
            raise ValueError("no etcd endpoint given")
        self.timeout = timeout
        self._current = 0
        self._http = httpx.AsyncClient(timeout=timeout)

    @property
    def endpoint(self) -> str:
        """The member calls go to now."""
        return self.endpoints[self._current]

    async def __aenter__(self) -> Etcd:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        failures = []
        for _ in self.endpoints:
            try:
                response = await self._http.post(f"{self.endpoint}/v3/{path}", json=body)
            except httpx.TransportError as exc:
                failures.append(f"etcd at {self.endpoint}: {exc!r}")
                self._current = (self._current + 1) % len(self.endpoints)
                continue
            return _answer(path, response.status_code, response.content)
        raise EtcdUnavailable("; ".join(failures))

    # -- keys ---------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        found, _ = await self.get_prefix(key, prefix=False)
        return found[0] if found else None

    async def get_prefix(self, key: str, *, prefix: bool = True) -> tuple[list[KeyValue], int]:
        """The keys under `key` (or `key` alone) and the revision they were read at."""
        answer = await self._call("kv/range", _range(key, prefix))
        return _kvs(answer), _revision(answer)

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        answer = await self._call("kv/put", Put(key, value, lease).to_json()["request_put"])
        return _revision(answer)

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        """How many keys went."""
        answer = await self._call("kv/deleterange", _range(key, prefix))
        return int(answer.get("deleted", 0))

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Operation],
        failure: Sequence[Operation] = (),
    ) -> TxnResult:
        answer = await self._call(
            "kv/txn",
            {
                "compare": [c.to_json() for c in compare],
                "success": [op.to_json() for op in success],
                "failure": [op.to_json() for op in failure],
            },
        )
        ranges = [
            _kvs(r["response_range"]) for r in answer.get("responses", []) if "response_range" in r
        ]
        return TxnResult(bool(answer.get("succeeded", False)), _revision(answer), ranges)

    # -- leases -------------------------------------------------------------------------

    async def grant(self, ttl_s: int) -> int:
        """A new lease of `ttl_s` seconds; its ID."""
        answer = await self._call("lease/grant", {"TTL": str(ttl_s)})
        return int(answer["ID"])

    async def keep_alive_once(self, lease: int) -> int:
        """Renew `lease`; the TTL it has again, 0 if it expired or was revoked."""
        answer = await self._call("lease/keepalive", {"ID": str(lease)})
        return int(answer.get("result", {}).get("TTL", 0))

    async def time_to_live(self, lease: int) -> int:
        """Seconds left on `lease` (-1: expired or revoked)."""
        answer = await self._call("lease/timetolive", {"ID": str(lease)})
        return int(answer.get("TTL", 0))  # etcd leaves 0 out; a lease that is gone says -1

    async def revoke(self, lease: int) -> None:
        """End `lease` and delete its keys now (an expired one is no error)."""
        with contextlib.suppress(LeaseNotFound):
            await self._call("lease/revoke", {"ID": str(lease)})

    # -- watches ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def watch(
        self, key: str, *, prefix: bool = True, start_revision: int = 0
    ) -> AsyncIterator[AsyncIterator[list[WatchEvent]]]:
        """Batches of changes to the keys under `key`, from `start_revision` on (0: from
        now). The stream ends with EtcdUnavailable when etcd goes away; the caller reads
        again and watches from the revision after the last one it saw."""
        request = {"create_request": {**_range(key, prefix), "start_revision": str(start_revision)}}
        timeout = httpx.Timeout(self.timeout, read=None)  # events come when they come
        try:
            async with self._http.stream(
                "POST", f"{self.endpoint}/v3/watch", json=request, timeout=timeout
            ) as response:
                if response.status_code != 200:
                    content = await response.aread()
                    _answer("watch", response.status_code, content)
                yield _watch_batches(response, self.endpoint)
        except httpx.TransportError as exc:
            raise EtcdUnavailable(f"etcd at {self.endpoint}: watch: {exc!r}") from exc


async def _watch_batches(
    response: httpx.Response, endpoint: str
) -> AsyncIterator[list[WatchEvent]]:
    try:
        async for line in response.aiter_lines():
            if not line.strip():
                continue
            result = json.loads(line).get("result", {})
            if result.get("canceled"):
                reason = result.get("cancel_reason", "compacted")
                raise EtcdError(f"etcd at {endpoint}: watch canceled: {reason}")
            events = [_event(e) for e in result.get("events", [])]
            if events:
                yield events
    except httpx.TransportError as exc:
        raise EtcdUnavailable(f"etcd at {endpoint}: watch: {exc!r}") from exc
    raise EtcdUnavailable(f"etcd at {endpoint}: the watch stream ended")


# After a failed renewal, how soon a KeptLease tries again.
RENEW_RETRY_S = 0.25


class KeptLease:
    """A lease renewed every third of its TTL (or `renew_every_s`), for as long as the
    context lasts.

    `lost` is set when the lease is gone, or must be taken as gone: etcd said it
    expired, or no renewal succeeded for a whole TTL (etcd unreachable: from
    then on etcd may have let it expire, and whatever it guarded must stop).
    On exit the lease is revoked; `stop(revoke=False)` lets it run out by itself
    instead (a server ID's hold after its host leaves, see membership).
    """

    def __init__(self, etcd: Etcd, ttl_s: int, *, renew_every_s: float | None = None) -> None:
        self.etcd = etcd
        self.ttl_s = ttl_s
        self.renew_every_s = ttl_s / 3 if renew_every_s is None else renew_every_s
        self.id = 0
        self.lost = asyncio.Event()
        self.renewing = True  # False while renewals fail (etcd away): not lost yet
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> KeptLease:
        self.id = await self.etcd.grant(self.ttl_s)
        self._task = asyncio.create_task(self._renew(), name=f"etcd lease {self.id:x}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self, *, revoke: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if revoke and not self.lost.is_set():
            with contextlib.suppress(EtcdUnavailable):
                await self.etcd.revoke(self.id)

    async def _renew(self) -> None:
        renewed_at = time.monotonic()
        pause = self.renew_every_s
        while time.monotonic() - renewed_at < self.ttl_s:
            await asyncio.sleep(pause)
            try:
                if await self.etcd.keep_alive_once(self.id) <= 0:
                    break
                renewed_at = time.monotonic()
                self.renewing = True
                pause = self.renew_every_s
            except EtcdError as exc:  # the lease still runs: try again until its TTL is over
                self.renewing = False
                pause = min(pause, RENEW_RETRY_S)  # soon: etcd may be back within the TTL
                log.warning("etcd lease %x not renewed: %s", self.id, exc)
        self.renewing = False
        log.error("etcd lease %x lost", self.id)
        self.lost.set()


def _answer(path: str, status: int, content: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(content)
    except ValueError:
        raise EtcdError(f"etcd {path}: HTTP {status}, not JSON: {content[:200]!r}") from None
    if not isinstance(answer, dict):
        raise EtcdError(f"etcd {path}: HTTP {status}, unexpected answer {answer!r}")
    if status != 200 or "error" in answer:
        message = answer.get("message") or answer.get("error") or f"HTTP {status}"
        kind = LeaseNotFound if "lease not found" in str(message) else EtcdError
        raise kind(f"etcd {path}: {message}")
    return answer


def _event(data: dict[str, Any]) -> WatchEvent:
    return WatchEvent(
        "delete" if data.get("type") == "DELETE" else "put", KeyValue.from_json(data["kv"])
    )


def _kvs(answer: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue.from_json(kv) for kv in answer.get("kvs", [])]


def _revision(answer: dict[str, Any]) -> int:
    return int(answer.get("header", {}).get("revision", 0))


def _range(key: str, prefix: bool) -> dict[str, str]:
    body = {"key": _b64(key)}
    if prefix:
        body["range_end"] = _b64(prefix_end(key.encode()))
    return body


def prefix_end(prefix: bytes) -> bytes:
    """The range end covering every key that starts with `prefix` (etcd's convention)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\x00"  # every key
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)
