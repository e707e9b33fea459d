"""Sans-IO FEC codec: RFC 8681 sliding-window RLC over GF(2^8).

One source symbol per protected packet. A source symbol is the packet's payload
behind a 2-byte big-endian length, zero-padded to `symbol_size`, so packets of
any size up to `symbol_size - 2` come back byte-exact. A repair symbol is the
GF(2^8) combination of the source symbols `first_id .. first_id + count - 1`
with the coefficients RFC 8681 §3.6 derives from (repair key, count, DT).

Driving contract:

- Sender: `FecEncoder.add_source(id, payload)` for every protected packet, ids
  consecutive from `first_id`; the window keeps the last `max_window` of them.
  `repair(key, first_id, count, dt)` whenever the redundancy policy wants a
  repair symbol over ids still in `window`; `remove_acked(id)` once the peer
  has every symbol up to `id`, so repairs stop covering them.
- Receiver: `FecDecoder.receive_source` for every source symbol that arrives
  and `receive_repair` for every repair symbol, in any order, duplicates
  allowed. Each returns the source symbols it made recoverable, oldest first,
  once each. A symbol beyond the window slides it forward; a symbol older than
  the window is ignored. `slide(first_id)` drops what is no longer wanted
  (delivered, or past its deadline); `resize(max_window)` changes the window
  (the receiver's FEC_WINDOW).

Memory is bounded by the window: the decoder holds `max_window` source symbols
and at most `max_window` pending equations (reduced row echelon form has one
row per unknown column; redundant repairs are dropped on arrival).

Every bad input raises a `FecError` (a `ValueError`) before any state changes,
except `CorruptRepairError`, which can only be seen after decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

from netsched_client.fec.rlc import DecoderCore, EncoderCore

BytesLike = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class Recovered:
    """A source symbol rebuilt from repair symbols: the packet payload as sent."""

    symbol_id: int
    payload: bytes


def _recovered(pairs: list[tuple[int, bytes]]) -> list[Recovered]:
    return [Recovered(symbol_id, payload) for symbol_id, payload in pairs]


class _WindowView:
    """The window geometry both codec ends expose from their Cython core."""

    __slots__ = ("_core",)
    _core: EncoderCore | DecoderCore

    @property
    def symbol_size(self) -> int:
        return self._core.symbol_size

    @property
    def max_window(self) -> int:
        return self._core.max_window

    @property
    def window(self) -> tuple[int, int]:
        """Encoder: (oldest id held, next id to add); decoder: the ids first <= id < end held."""
        return self._core.window


class FecEncoder(_WindowView):
    """Keeps the last `max_window` source symbols and computes repair symbols over them."""

    __slots__ = ()

    def __init__(self, symbol_size: int, max_window: int, first_id: int = 0) -> None:
        self._core: EncoderCore = EncoderCore(symbol_size, max_window, first_id)

    def add_source(self, symbol_id: int, payload: BytesLike) -> None:
        """Add the next source symbol; when the window is full the oldest one leaves."""
        self._core.add_source(symbol_id, payload)

    def remove_acked(self, up_to_id: int) -> None:
        """Forget every source symbol with id <= `up_to_id`."""
        self._core.remove_acked(up_to_id)

    def repair(self, repair_key: int, first_id: int, count: int, dt: int = 15) -> bytes:
        """The repair symbol over ids first_id..first_id+count-1 (DT 15: every one of them)."""
        return self._core.repair(repair_key, first_id, count, dt)


class FecDecoder(_WindowView):
    """Recovers lost source symbols of the window from the repair symbols received."""

    __slots__ = ()

    def __init__(self, symbol_size: int, max_window: int, first_id: int = 0) -> None:
        self._core: DecoderCore = DecoderCore(symbol_size, max_window, first_id)

    @property
    def pending_repairs(self) -> int:
        """Equations held that have not decoded anything yet."""
        return self._core.pending

    def has(self, symbol_id: int) -> bool:
        """Whether the source symbol `symbol_id` is in the window, received or recovered."""
        return self._core.is_known(symbol_id)

    def receive_source(self, symbol_id: int, payload: BytesLike) -> list[Recovered]:
        """Take a source symbol as it arrived (the packet payload, unpadded)."""
        return _recovered(self._core.receive_source(symbol_id, payload))

    def receive_repair(
        self, repair_key: int, first_id: int, count: int, dt: int, symbol: BytesLike
    ) -> list[Recovered]:
        """Take a repair symbol over ids first_id..first_id+count-1."""
        return _recovered(self._core.receive_repair(repair_key, first_id, count, dt, symbol))

    def slide(self, first_id: int) -> None:
        """Forget every source symbol and equation below `first_id`."""
        self._core.slide(first_id)

    def resize(self, max_window: int) -> None:
        """Hold `max_window` source symbols from now on, in memory of that size.

        Shrinking keeps the newest ids that hold a symbol or an equation entry
        and forgets the older ones, with every equation over them; what is kept
        decodes as before.
        """
        self._core.resize(max_window)
