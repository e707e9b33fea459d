"""TinyMT32 (RFC 8682) and RFC 8681 coding coefficients: vectors, oracle cross-checks, limits."""

from __future__ import annotations

import itertools

import fec_reference as ref
import pytest
from hypothesis import given
from hypothesis import strategies as st

from netsched_client.fec import FecParameterError, TinyMT32, generate_coding_coefs

# RFC 8682 §3 (Figure 2): the first 50 outputs of tinymt32_generate_uint32() for seed 1.
RFC8682_SEED1 = [
    2545341989, 981918433, 3715302833, 2387538352, 3591001365,
    3820442102, 2114400566, 2196103051, 2783359912, 764534509,
    643179475, 1822416315, 881558334, 4207026366, 3690273640,
    3240535687, 2921447122, 3984931427, 4092394160, 44209675,
    2188315343, 2908663843, 1834519336, 3774670961, 3019990707,
    4065554902, 1239765502, 4035716197, 3412127188, 552822483,
    161364450, 353727785, 140085994, 149132008, 2547770827,
    4064042525, 4078297538, 2057335507, 622384752, 2041665899,
    2193913817, 1080849512, 33160901, 662956935, 642999063,
    3384709977, 1723175122, 3866752252, 521822317, 2292524454,
]  # fmt: skip


def test_tinymt32_matches_rfc8682_vector() -> None:
    generator = TinyMT32(1)
    assert [generator.generate_uint32() for _ in range(50)] == RFC8682_SEED1


def test_reference_tinymt32_matches_rfc8682_vector() -> None:
    assert list(itertools.islice(ref.tinymt32(1), 50)) == RFC8682_SEED1


@given(st.integers(0, 2**32 - 1))
def test_tinymt32_equals_oracle_for_any_seed(seed: int) -> None:
    generator = TinyMT32(seed)
    assert [generator.generate_uint32() for _ in range(20)] == list(
        itertools.islice(ref.tinymt32(seed), 20)
    )


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_tinymt32_rejects_seed_out_of_range(seed: int) -> None:
    with pytest.raises(ValueError, match="seed"):
        TinyMT32(seed)


# -- coefficients --------------------------------------------------------------


def test_coefficients_for_key_1_follow_the_rfc8682_stream() -> None:
    # Known answers for repair key 1 (seed 1): RFC 8681 §3.6 over the RFC 8682
    # stream above. DT 15 takes each output's low byte (tinymt32_rand256),
    # redrawing zeros: 2545341989 & 0xFF = 37, 981918433 & 0xFF = 225, ...
    # DT 7 first draws a selector (tinymt32_rand16, low 4 bits) and a byte only
    # when selector <= 7: 2545341989 & 0xF = 5, so the byte is 981918433's, 225.
    assert list(generate_coding_coefs(1, 10, 15)) == [37, 225, 177, 176, 21, 246, 54, 139, 168, 237]
    assert list(generate_coding_coefs(1, 10, 7)) == [225, 176, 246, 139, 0, 0, 187, 0, 0, 0]


@pytest.mark.parametrize("dt", range(16))
def test_coefficients_for_key_1_replay_the_published_stream(dt: int) -> None:
    # 20 coefficients use at most 40 outputs (plus rare zero redraws): within the 50.
    expected = ref.coefs_from_stream(iter(RFC8682_SEED1), 20, dt)
    assert list(generate_coding_coefs(1, 20, dt)) == expected


@given(st.integers(0, 0xFFFF), st.integers(0, 300), st.integers(0, 15))
def test_coefficients_equal_oracle(repair_key: int, cc_nb: int, dt: int) -> None:
    assert list(generate_coding_coefs(repair_key, cc_nb, dt)) == ref.coding_coefs(
        repair_key, cc_nb, dt
    )


@pytest.mark.parametrize("dt", [0, 3, 7, 11, 15])
def test_coefficient_density_follows_dt(dt: int) -> None:
    # Each coefficient is non-zero with probability (DT + 1) / 16.
    coefs = b"".join(generate_coding_coefs(key, 100, dt) for key in range(200))
    nonzero = sum(1 for c in coefs if c) / len(coefs)
    assert abs(nonzero - (dt + 1) / 16) < 0.02
    assert set(coefs) - {0} <= set(range(1, 256))


def test_dt_15_never_yields_zero() -> None:
    assert all(generate_coding_coefs(key, 64, 15).count(0) == 0 for key in range(500))


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((-1, 4, 15), "repair_key"),
        ((0x10000, 4, 15), "repair_key"),
        ((1, -1, 15), "cc_nb"),
        ((1, 4096, 15), "cc_nb"),
        ((1, 4, 16), "dt"),
        ((1, 4, -1), "dt"),
        ((2**80, 4, 15), "repair_key"),
    ],
)
def test_coefficient_arguments_are_checked(args: tuple[int, int, int], field: str) -> None:
    with pytest.raises(FecParameterError, match=field):
        generate_coding_coefs(*args)
