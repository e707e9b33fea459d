"""Pure-Python oracle for `netsched_client.fec`, written from RFC 8681/8682 for tests only.

Deliberately different from the package where it can be: the field product is
shift-and-reduce (no log tables), region products use `bytes.translate` and
XOR through Python ints, and decoding is a batch Gauss-Jordan elimination over
everything received, not the incremental one. Never imported by the package.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache

POLYNOMIAL = 0x11D
LENGTH_PREFIX = 2
_U32 = 0xFFFFFFFF

# -- GF(2^8) ------------------------------------------------------------------


def gf_mul(a: int, b: int) -> int:
    product = 0
    while b:
        if b & 1:
            product ^= a
        b >>= 1
        a <<= 1
        if a & 0x100:
            a ^= POLYNOMIAL
    return product


def gf_inv(a: int) -> int:
    if a == 0:
        raise ZeroDivisionError("0 has no inverse")
    result = 1
    for _ in range(254):  # a^254 = a^-1 in a group of order 255
        result = gf_mul(result, a)
    return result


@cache
def product_row(coef: int) -> bytes:
    return bytes(gf_mul(coef, x) for x in range(256))


def scale(coef: int, data: bytes) -> bytes:
    return data.translate(product_row(coef))


def xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


# -- TinyMT32 (RFC 8682) and coefficients (RFC 8681 §3.6) ----------------------


def tinymt32(seed: int) -> Iterator[int]:
    mat1, mat2, tmat = 0x8F7011EE, 0xFC78FF1F, 0x3793FDFF
    status = [seed, mat1, mat2, tmat]
    for i in range(1, 8):
        prev = status[(i - 1) & 3]
        status[i & 3] ^= (i + 1812433253 * (prev ^ (prev >> 30))) & _U32

    def next_state() -> None:
        x = (status[0] & 0x7FFFFFFF) ^ status[1] ^ status[2]
        y = status[3]
        x = (x ^ (x << 1)) & _U32
        y ^= (y >> 1) ^ x
        status[0], status[1] = status[1], status[2]
        status[2] = (x ^ (y << 10)) & _U32
        status[3] = y
        if y & 1:
            status[1] ^= mat1
            status[2] ^= mat2

    for _ in range(8):
        next_state()
    while True:
        next_state()
        t1 = (status[0] + (status[2] >> 8)) & _U32
        yield status[3] ^ t1 ^ (tmat if t1 & 1 else 0)


def coefs_from_stream(stream: Iterator[int], cc_nb: int, dt: int) -> list[int]:
    """RFC 8681 §3.6 for GF(2^8), reading the PRNG's 32-bit outputs from `stream`."""

    def nonzero_byte() -> int:
        while (value := next(stream) & 0xFF) == 0:
            pass
        return value

    return [nonzero_byte() if dt == 15 or next(stream) & 0xF <= dt else 0 for _ in range(cc_nb)]


def coding_coefs(repair_key: int, cc_nb: int, dt: int) -> list[int]:
    return coefs_from_stream(tinymt32(repair_key), cc_nb, dt)


# -- symbols -------------------------------------------------------------------


def source_symbol(payload: bytes, symbol_size: int) -> bytes:
    assert len(payload) <= symbol_size - LENGTH_PREFIX
    return len(payload).to_bytes(2, "big") + payload + bytes(symbol_size - 2 - len(payload))


def parse_symbol(symbol: bytes) -> bytes:
    length = int.from_bytes(symbol[:LENGTH_PREFIX], "big")
    if length > len(symbol) - LENGTH_PREFIX or any(symbol[LENGTH_PREFIX + length :]):
        raise ValueError("bad length prefix or padding")
    return symbol[LENGTH_PREFIX : LENGTH_PREFIX + length]


def repair_symbol(symbols: Sequence[bytes], repair_key: int, dt: int) -> bytes:
    """The combination of padded `symbols` (consecutive ids) with their coefficients."""
    out = bytes(len(symbols[0]))
    for coef, symbol in zip(coding_coefs(repair_key, len(symbols), dt), symbols, strict=True):
        out = xor(out, scale(coef, symbol))
    return out


# -- batch decoding ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Repair:
    repair_key: int
    first_id: int
    count: int
    dt: int
    symbol: bytes


def decode(
    symbol_size: int, received: Mapping[int, bytes], repairs: Iterable[Repair]
) -> dict[int, bytes]:
    """Payloads of every missing id that the received symbols determine.

    An unknown is determined exactly when its unit vector lies in the row
    space, i.e. when the reduced echelon form has a row equal to it.
    """
    rows: list[tuple[dict[int, int], bytes]] = []
    for repair in repairs:
        coefs: dict[int, int] = {}
        rhs = repair.symbol
        for offset, coef in enumerate(coding_coefs(repair.repair_key, repair.count, repair.dt)):
            sid = repair.first_id + offset
            if coef and sid in received:
                rhs = xor(rhs, scale(coef, source_symbol(received[sid], symbol_size)))
            elif coef:
                coefs[sid] = coef
        rows.append((coefs, rhs))
    reduced = _gauss_jordan(rows)
    for coefs, rhs in reduced:
        if not coefs and any(rhs):
            raise ValueError("inconsistent repair symbols")
    return {next(iter(coefs)): parse_symbol(rhs) for coefs, rhs in reduced if len(coefs) == 1}


def _gauss_jordan(rows: list[tuple[dict[int, int], bytes]]) -> list[tuple[dict[int, int], bytes]]:
    pending = list(rows)
    done: list[tuple[dict[int, int], bytes]] = []
    columns = sorted({sid for coefs, _ in rows for sid in coefs})
    for col in columns:
        pivot_at = next((i for i, (coefs, _) in enumerate(pending) if coefs.get(col)), None)
        if pivot_at is None:
            continue
        coefs, rhs = pending.pop(pivot_at)
        factor = gf_inv(coefs[col])
        pivot = ({s: gf_mul(factor, c) for s, c in coefs.items()}, scale(factor, rhs))
        pending = [_eliminate(row, pivot, col) for row in pending]
        done = [_eliminate(row, pivot, col) for row in done]
        done.append(pivot)
    return done + pending


def _eliminate(
    row: tuple[dict[int, int], bytes], pivot: tuple[dict[int, int], bytes], col: int
) -> tuple[dict[int, int], bytes]:
    coefs, rhs = row
    factor = coefs.get(col, 0)
    if not factor:
        return row
    merged = dict(coefs)
    for sid, coef in pivot[0].items():
        value = merged.get(sid, 0) ^ gf_mul(factor, coef)
        if value:
            merged[sid] = value
        else:
            merged.pop(sid, None)
    return merged, xor(rhs, scale(factor, pivot[1]))
