"""GF(2^8) of RFC 8681: field axioms and the tables, against the oracle."""

from __future__ import annotations

import fec_reference as ref
import pytest
from hypothesis import given
from hypothesis import strategies as st

from netsched_client.fec import _rlc, gf256

elements = st.integers(0, 255)
nonzero = st.integers(1, 255)


@given(elements, elements, elements)
def test_field_axioms(a: int, b: int, c: int) -> None:
    mul, add = gf256.mul, gf256.add
    assert mul(a, b) == mul(b, a)
    assert mul(mul(a, b), c) == mul(a, mul(b, c))
    assert mul(a, add(b, c)) == add(mul(a, b), mul(a, c))
    assert mul(a, 1) == a
    assert mul(a, 0) == 0
    assert add(a, a) == 0


@given(nonzero)
def test_inverse(a: int) -> None:
    assert gf256.mul(a, gf256.inv(a)) == 1
    assert gf256.inv(a) == ref.gf_inv(a)
    assert gf256.div(gf256.mul(a, 7), a) == 7


def test_field_matches_oracle_exhaustively() -> None:
    table = _rlc.mul_table()
    for a in range(256):
        row = ref.product_row(a)
        assert table[a * 256 : a * 256 + 256] == row
        assert bytes(gf256.mul(a, b) for b in range(256)) == row


def test_polynomial_and_generator() -> None:
    # x^8 = x^4 + x^3 + x^2 + 1, and x generates all 255 non-zero elements.
    assert gf256.mul(0x80, 2) == 0x1D
    assert sorted(gf256.EXP[:255]) == list(range(1, 256))


def test_zero_has_no_inverse_and_ranges_are_checked() -> None:
    with pytest.raises(ZeroDivisionError):
        gf256.inv(0)
    with pytest.raises(ValueError, match="b=256"):
        gf256.mul(1, 256)
