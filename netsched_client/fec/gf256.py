"""GF(2^8) as RFC 8681 §3.4 defines it: polynomial basis, x^8 + x^4 + x^3 + x^2 + 1.

`EXP`/`LOG` are the only tables built here (in Python, once, at import); the
Cython codec derives its 256x256 product and split-nibble tables from them at
module init, so the field is defined in exactly one place.
"""

from __future__ import annotations

POLYNOMIAL = 0x11D  # x^8 + x^4 + x^3 + x^2 + 1; x (= 2) generates the multiplicative group
ORDER = 255  # size of the multiplicative group


def _build_tables() -> tuple[bytes, bytes]:
    exp = bytearray(2 * ORDER)  # doubled so EXP[LOG[a] + LOG[b]] needs no modulo
    log = bytearray(256)  # LOG[0] is meaningless and left 0; callers test for 0 first
    value = 1
    for power in range(ORDER):
        exp[power] = exp[power + ORDER] = value
        log[value] = power
        value <<= 1
        if value & 0x100:
            value ^= POLYNOMIAL
    return bytes(exp), bytes(log)


EXP, LOG = _build_tables()


def _check(name: str, value: int) -> None:
    if not 0 <= value <= 255:
        raise ValueError(f"GF(2^8) element {name}={value} is out of range 0..255")


def add(a: int, b: int) -> int:
    """a + b (= a - b): XOR in characteristic 2."""
    _check("a", a)
    _check("b", b)
    return a ^ b


def mul(a: int, b: int) -> int:
    """a * b."""
    _check("a", a)
    _check("b", b)
    if a == 0 or b == 0:
        return 0
    return EXP[LOG[a] + LOG[b]]


def inv(a: int) -> int:
    """The multiplicative inverse of a non-zero `a`."""
    _check("a", a)
    if a == 0:
        raise ZeroDivisionError("0 has no inverse in GF(2^8)")
    return EXP[ORDER - LOG[a]]


def div(a: int, b: int) -> int:
    """a / b for a non-zero `b`."""
    return mul(a, inv(b))
