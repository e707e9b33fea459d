"""FEC region kernels, encoder and decoder (Cython) against the pure-Python oracle."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import fec_reference as ref
import pytest
from hypothesis import given
from hypothesis import strategies as st

from netsched_client.fec import (
    MAX_SYMBOL_ID,
    CorruptRepairError,
    FecDecoder,
    FecEncoder,
    FecError,
    FecParameterError,
    Recovered,
    SymbolIdError,
    SymbolSizeError,
    _rlc,
)


@pytest.fixture(params=["simd", "table"])
def kernel(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test on the AVX2 kernel (when the CPU has it), then on the table kernel."""
    previous = _rlc.kernel_name() != "table"
    if request.param == "simd" and not _rlc.set_simd(True):
        pytest.skip("CPU without AVX2")
    _rlc.set_simd(request.param == "simd")
    yield _rlc.kernel_name()
    _rlc.set_simd(previous)


def random_payloads(rng: random.Random, count: int, symbol_size: int) -> list[bytes]:
    return [rng.randbytes(rng.randint(0, symbol_size - 2)) for _ in range(count)]


def filled_encoder(symbol_size: int, max_window: int, payloads: list[bytes]) -> FecEncoder:
    encoder = FecEncoder(symbol_size, max_window)
    for symbol_id, payload in enumerate(payloads):
        encoder.add_source(symbol_id, payload)
    return encoder


def oracle_repair(
    payloads: list[bytes], symbol_size: int, key: int, first: int, count: int, dt: int
) -> bytes:
    symbols = [ref.source_symbol(p, symbol_size) for p in payloads[first : first + count]]
    return ref.repair_symbol(symbols, key, dt)


# -- region kernel -------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 15, 31, 32, 33, 64, 95, 1200, 1201])
def test_region_madd_matches_oracle(kernel: str, length: int) -> None:
    src = os.urandom(length)
    start = os.urandom(length)
    for coef in (0, 1, 2, 0x1D, 0x80, 0xFF, *os.urandom(4)):
        dst = bytearray(start)
        _rlc.region_madd(dst, src, coef)
        assert bytes(dst) == ref.xor(start, ref.scale(coef, src)), (kernel, coef)


def test_region_madd_checks_its_arguments() -> None:
    with pytest.raises(SymbolSizeError):
        _rlc.region_madd(bytearray(3), b"ab", 1)
    with pytest.raises(FecParameterError, match="coef"):
        _rlc.region_madd(bytearray(2), b"ab", 256)


# -- encoder -------------------------------------------------------------------


def test_encoder_equals_oracle_over_random_windows(kernel: str) -> None:
    rng = random.Random(8681)
    for _ in range(60):
        symbol_size = rng.choice([3, 17, 100, 1200, rng.randint(3, 1500)])
        max_window = rng.choice([1, 4, 16, 32, rng.randint(1, 64)])
        payloads = random_payloads(rng, rng.randint(1, 3 * max_window), symbol_size)
        encoder = filled_encoder(symbol_size, max_window, payloads)
        first_held, end = encoder.window
        for _ in range(5):
            first = rng.randrange(first_held, end)
            count = rng.randint(1, end - first)
            key, dt = rng.randrange(0x10000), rng.choice([15, 15, 12, 7, 1, 0])
            assert encoder.repair(key, first, count, dt) == oracle_repair(
                payloads, symbol_size, key, first, count, dt
            )


def test_encoder_window_slides_and_forgets_acked() -> None:
    encoder = filled_encoder(10, 4, [bytes([i]) for i in range(6)])
    assert encoder.window == (2, 6)  # full: the two oldest left
    with pytest.raises(SymbolIdError, match=r"outside the window 2\.\.5"):
        encoder.repair(1, 1, 2)
    encoder.remove_acked(3)
    assert encoder.window == (4, 6)
    assert len(encoder.repair(1, 4, 2)) == 10
    encoder.remove_acked(1)  # acks never move the window back
    assert encoder.window == (4, 6)
    encoder.remove_acked(99)
    assert encoder.window == (6, 6)
    with pytest.raises(SymbolIdError):
        encoder.repair(1, 5, 1)
    encoder.add_source(6, b"x")
    assert encoder.window == (6, 7)


def test_encoder_rejects_bad_input_without_changing_state() -> None:
    encoder = filled_encoder(10, 4, [b"a", b"b"])
    with pytest.raises(SymbolIdError, match="expected 2"):
        encoder.add_source(3, b"c")
    with pytest.raises(SymbolSizeError, match="9 bytes exceeds 8"):
        encoder.add_source(2, bytes(9))
    for key, first, count, dt, error in [
        (-1, 0, 1, 15, "repair_key"),
        (0x10000, 0, 1, 15, "repair_key"),
        (1, 0, 1, 16, "dt"),
        (1, 0, 0, 15, "count"),
        (1, 0, 5, 15, "count"),
    ]:
        with pytest.raises(FecParameterError, match=error):
            encoder.repair(key, first, count, dt)
    assert encoder.window == (0, 2)
    encoder.add_source(2, bytes(8))
    assert encoder.window == (0, 3)


@pytest.mark.parametrize(
    ("args", "error", "field"),
    [
        ((2, 4), FecParameterError, "symbol_size"),
        ((65536, 4), FecParameterError, "symbol_size"),
        ((10, 0), FecParameterError, "max_window"),
        ((10, 4096), FecParameterError, "max_window"),
        ((10, 4, -1), SymbolIdError, "first_id"),
        ((10, 4, MAX_SYMBOL_ID + 1), SymbolIdError, "first_id"),
    ],
)
def test_codec_parameters_are_checked(
    args: tuple[int, ...], error: type[FecError], field: str
) -> None:
    for codec in (FecEncoder, FecDecoder):
        with pytest.raises(error, match=field):
            codec(*args)


# -- decoder: exact recovery ---------------------------------------------------


def test_recovers_any_single_loss(kernel: str) -> None:
    payloads = [os.urandom(n) for n in (0, 1, 50, 98, 7, 64, 33, 2)]
    encoder = filled_encoder(100, 8, payloads)
    repair = encoder.repair(42, 0, 8)
    for lost in range(8):
        decoder = FecDecoder(100, 8)
        for symbol_id, payload in enumerate(payloads):
            if symbol_id != lost:
                assert decoder.receive_source(symbol_id, payload) == []
        assert decoder.receive_repair(42, 0, 8, 15, repair) == [Recovered(lost, payloads[lost])]
        assert decoder.pending_repairs == 0


def test_random_loss_patterns_recover_exactly_what_the_rank_allows(kernel: str) -> None:
    # The oracle solves the whole system at once; a lost id is recoverable
    # exactly when the equations determine it. The incremental decoder must
    # return those ids, with the sent payloads, once each, and no other lost id.
    rng = random.Random(5)
    for _ in range(150):
        max_window = rng.choice([4, 16, 32])
        symbol_size = rng.randint(3, 200)
        payloads = random_payloads(rng, rng.randint(1, max_window), symbol_size)
        n = len(payloads)
        lost = set(rng.sample(range(n), rng.randint(0, n)))
        repairs = []
        for _ in range(rng.randint(0, len(lost) + 2)):
            first = rng.randrange(n)
            count = rng.randint(1, n - first)
            key, dt = rng.randrange(0x10000), rng.choice([15, 15, 10, 4, 0])
            symbol = oracle_repair(payloads, symbol_size, key, first, count, dt)
            repairs.append(ref.Repair(key, first, count, dt, symbol))
        received = {i: p for i, p in enumerate(payloads) if i not in lost}
        expected = ref.decode(symbol_size, received, repairs)
        assert all(expected[i] == payloads[i] for i in expected)

        events: list[tuple[str, int]] = [("source", i) for i in received]
        events += [("repair", j) for j in range(len(repairs))]
        events += rng.choices(events, k=len(events) // 3) if events else []
        rng.shuffle(events)
        decoder = FecDecoder(symbol_size, max_window)
        recovered: list[Recovered] = []
        for kind, index in events:
            if kind == "source":
                recovered += decoder.receive_source(index, received[index])
            else:
                r = repairs[index]
                recovered += decoder.receive_repair(
                    r.repair_key, r.first_id, r.count, r.dt, r.symbol
                )
        # A received id may come back first from repairs when its source is late.
        assert {r.symbol_id: r.payload for r in recovered if r.symbol_id in lost} == expected
        assert all(r.payload == payloads[r.symbol_id] for r in recovered)
        assert len({r.symbol_id for r in recovered}) == len(recovered)
        assert {i for i in lost if decoder.has(i)} == set(expected)


def test_enough_dense_repairs_recover_every_loss(kernel: str) -> None:
    rng = random.Random(16)
    for _ in range(20):
        payloads = random_payloads(rng, 16, 1200)
        encoder = filled_encoder(1200, 16, payloads)
        lost = set(rng.sample(range(16), rng.randint(1, 8)))
        decoder = FecDecoder(1200, 16)
        recovered: list[Recovered] = []
        for symbol_id, payload in enumerate(payloads):
            if symbol_id not in lost:
                recovered += decoder.receive_source(symbol_id, payload)
        for key in range(len(lost) + 1):
            recovered += decoder.receive_repair(key, 0, 16, 15, encoder.repair(key, 0, 16))
        assert sorted(r.symbol_id for r in recovered) == sorted(lost)
        assert all(r.payload == payloads[r.symbol_id] for r in recovered)


def test_not_decodable_until_enough_equations() -> None:
    payloads = [b"a", b"bb", b"ccc", b"dddd"]
    encoder = filled_encoder(10, 4, payloads)
    decoder = FecDecoder(10, 4)
    decoder.receive_source(0, payloads[0])
    decoder.receive_source(3, payloads[3])
    assert decoder.receive_repair(1, 0, 4, 15, encoder.repair(1, 0, 4)) == []
    assert decoder.pending_repairs == 1
    assert not decoder.has(1)
    assert not decoder.has(2)
    second = decoder.receive_repair(2, 1, 2, 15, encoder.repair(2, 1, 2))
    assert second == [Recovered(1, b"bb"), Recovered(2, b"ccc")]
    assert decoder.pending_repairs == 0


def test_repairs_before_sources_and_duplicates() -> None:
    payloads = [os.urandom(20) for _ in range(6)]
    encoder = filled_encoder(30, 8, payloads)
    decoder = FecDecoder(30, 8)
    repairs = [encoder.repair(key, 0, 6) for key in (7, 8)]
    for symbol in repairs * 2:  # the duplicate reduces to 0 = 0 and is dropped
        assert decoder.receive_repair(7 + repairs.index(symbol), 0, 6, 15, symbol) == []
    assert decoder.pending_repairs == 2
    recovered: list[Recovered] = []
    for symbol_id in (5, 0, 0, 3, 1):
        recovered += decoder.receive_source(symbol_id, payloads[symbol_id])
    assert recovered == [Recovered(2, payloads[2]), Recovered(4, payloads[4])]
    # Late copies of what was recovered are ignored, not recovered again.
    assert decoder.receive_source(2, payloads[2]) == []
    assert decoder.receive_repair(7, 0, 6, 15, repairs[0]) == []
    assert decoder.pending_repairs == 0


def test_sparse_repair_with_zero_coefficients() -> None:
    payloads = [bytes([i]) * 5 for i in range(8)]
    key = next(k for k in range(100) if 0 in _rlc.generate_coding_coefs(k, 8, 3))
    coefs = _rlc.generate_coding_coefs(key, 8, 3)
    lost = coefs.index(0)  # a loss the repair cannot see
    seen = next(i for i, c in enumerate(coefs) if c)
    encoder = filled_encoder(10, 8, payloads)
    decoder = FecDecoder(10, 8)
    for symbol_id in set(range(8)) - {lost, seen}:
        decoder.receive_source(symbol_id, payloads[symbol_id])
    assert decoder.receive_repair(key, 0, 8, 3, encoder.repair(key, 0, 8, 3)) == [
        Recovered(seen, payloads[seen])
    ]
    assert not decoder.has(lost)


# -- decoder: window -------------------------------------------------------------


def test_window_slides_forward_and_drops_what_left() -> None:
    payloads = [bytes([i]) for i in range(8)]
    encoder = filled_encoder(10, 8, payloads)
    decoder = FecDecoder(10, 4)
    decoder.receive_source(2, payloads[2])
    decoder.receive_source(3, payloads[3])
    assert decoder.receive_repair(1, 0, 4, 15, encoder.repair(1, 0, 4)) == []
    assert decoder.pending_repairs == 1  # ids 0 and 1 unknown
    decoder.receive_source(4, payloads[4])  # window now 1..4: the equation on id 0 goes
    assert decoder.window == (1, 5)
    assert decoder.pending_repairs == 0
    assert decoder.receive_repair(2, 0, 4, 15, encoder.repair(2, 0, 4)) == []  # stale
    assert decoder.receive_source(0, payloads[0]) == []  # stale
    assert not decoder.has(0)
    assert decoder.receive_repair(3, 1, 4, 15, encoder.repair(3, 1, 4)) == [
        Recovered(1, payloads[1])
    ]
    decoder.slide(3)
    assert decoder.window == (3, 7)
    assert not decoder.has(2)
    assert decoder.has(3)
    decoder.slide(1)  # never backwards
    assert decoder.window == (3, 7)
    decoder.receive_source(1000, b"far")  # a jump clears the window
    assert decoder.window == (997, 1001)
    assert not decoder.has(3)
    assert decoder.has(1000)


def test_repair_beyond_the_window_slides_it() -> None:
    payloads = [bytes([i]) * 3 for i in range(10)]
    encoder = filled_encoder(10, 16, payloads)
    decoder = FecDecoder(10, 4)
    for symbol_id in (6, 7, 9):
        decoder.receive_source(symbol_id, payloads[symbol_id])
    assert decoder.receive_repair(5, 6, 4, 15, encoder.repair(5, 6, 4)) == [
        Recovered(8, payloads[8])
    ]
    assert decoder.window == (6, 10)


def test_stream_with_losses_recovers_most_and_only_correct_data(kernel: str) -> None:
    # 300 packets, 10 % random loss, a repair over the encoder's whole window
    # after every 4th source symbol, light reordering on the wire.
    rng = random.Random(2024)
    window, size = 16, 200
    encoder, decoder = FecEncoder(size, window), FecDecoder(size, window)
    payloads = random_payloads(rng, 300, size)
    wire: list[tuple[str, tuple[int | bytes, ...]]] = []
    for symbol_id, payload in enumerate(payloads):
        encoder.add_source(symbol_id, payload)
        wire.append(("source", (symbol_id, payload)))
        if symbol_id % 4 == 3:
            first, end = encoder.window
            repair = encoder.repair(symbol_id, first, end - first)
            wire.append(("repair", (symbol_id, first, end - first, 15, repair)))
    for i in range(len(wire) - 1):
        if rng.random() < 0.1:
            wire[i], wire[i + 1] = wire[i + 1], wire[i]
    lost = {i for i in range(len(wire)) if rng.random() < 0.1}
    recovered: list[Recovered] = []
    for i, (kind, args) in enumerate(wire):
        if i in lost:
            continue
        if kind == "source":
            recovered += decoder.receive_source(*args)  # type: ignore[arg-type]
        else:
            recovered += decoder.receive_repair(*args)  # type: ignore[arg-type]
    lost_sources = {wire[i][1][0] for i in lost if wire[i][0] == "source"}
    recovered_ids = {r.symbol_id for r in recovered}
    assert all(r.payload == payloads[r.symbol_id] for r in recovered)
    assert len(recovered) == len(recovered_ids)
    assert len(recovered_ids & lost_sources) >= 0.8 * len(lost_sources)


# -- decoder: bad input ----------------------------------------------------------


def test_inconsistent_repair_is_detected() -> None:
    payloads = [b"one", b"two", b"three"]
    encoder = filled_encoder(10, 4, payloads)
    decoder = FecDecoder(10, 4)
    for symbol_id, payload in enumerate(payloads):
        decoder.receive_source(symbol_id, payload)
    bad = bytearray(encoder.repair(9, 0, 3))
    bad[4] ^= 1
    with pytest.raises(CorruptRepairError, match="contradicts"):
        decoder.receive_repair(9, 0, 3, 15, bytes(bad))
    assert decoder.pending_repairs == 0


def test_corrupt_repair_that_decodes_is_caught_by_the_symbol_check() -> None:
    # An innovative corrupt repair cannot contradict anything; it decodes to
    # garbage, which the length prefix and zero padding reveal.
    payloads = [b"one", b"two", b"three"]
    encoder = filled_encoder(10, 4, payloads)
    decoder = FecDecoder(10, 4)
    decoder.receive_source(0, payloads[0])
    bad = bytearray(encoder.repair(9, 0, 3))
    bad[0] ^= 0x80
    assert decoder.receive_repair(9, 0, 3, 15, bytes(bad)) == []
    with pytest.raises(CorruptRepairError, match=r"ids \[1, 2\]"):
        decoder.receive_repair(10, 0, 3, 15, encoder.repair(10, 0, 3))
    assert decoder.pending_repairs == 0


@pytest.mark.parametrize(
    "symbol",
    [b"\xff\xff" + bytes(8), ref.source_symbol(b"ab", 10)[:-1] + b"\x01"],
    ids=["length", "padding"],
)
def test_malformed_recovered_symbol_is_an_error(symbol: bytes) -> None:
    (coef,) = _rlc.generate_coding_coefs(3, 1, 15)
    decoder = FecDecoder(10, 4)
    with pytest.raises(CorruptRepairError, match=r"ids \[0\]"):
        decoder.receive_repair(3, 0, 1, 15, ref.scale(coef, symbol))


def test_decoder_rejects_bad_input_before_touching_state() -> None:
    decoder = FecDecoder(10, 4)
    decoder.receive_source(1, b"x")
    cases: list[tuple[type[FecError], str, tuple[object, ...]]] = [
        (SymbolSizeError, "9 bytes exceeds 8", ("source", 100, bytes(9))),
        (SymbolIdError, "symbol_id", ("source", -1, b"")),
        (SymbolIdError, "symbol_id", ("source", MAX_SYMBOL_ID + 1, b"")),
        (SymbolSizeError, "has 9 bytes, expected 10", ("repair", 1, 100, 1, 15, bytes(9))),
        (FecParameterError, "count", ("repair", 1, 100, 5, 15, bytes(10))),
        (FecParameterError, "count", ("repair", 1, 100, 0, 15, bytes(10))),
        (FecParameterError, "dt", ("repair", 1, 100, 1, 16, bytes(10))),
        (FecParameterError, "repair_key", ("repair", 2**16, 100, 1, 15, bytes(10))),
        (SymbolIdError, "first_id", ("repair", 1, -5, 1, 15, bytes(10))),
        (SymbolIdError, "first_id", ("repair", 1, MAX_SYMBOL_ID, 2, 15, bytes(10))),
        (SymbolIdError, "first_id", ("slide", -1)),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match=message):
            if call[0] == "source":
                decoder.receive_source(*call[1:])  # type: ignore[arg-type]
            elif call[0] == "repair":
                decoder.receive_repair(*call[1:])  # type: ignore[arg-type]
            else:
                decoder.slide(*call[1:])  # type: ignore[arg-type]
        assert decoder.window == (0, 4)
        assert decoder.has(1)


# -- fuzz ------------------------------------------------------------------------


@st.composite
def genuine_schedules(draw: st.DrawFn) -> tuple[int, int, list[bytes], list[tuple[int, ...]]]:
    max_window = draw(st.integers(1, 8))
    symbol_size = draw(st.integers(3, 24))
    payloads = draw(st.lists(st.binary(max_size=symbol_size - 2), min_size=1, max_size=20))
    n = len(payloads)
    source = st.tuples(st.just(0), st.integers(0, n - 1))
    repair = st.tuples(
        st.just(1),
        st.integers(0, n - 1),
        st.integers(1, max_window),
        st.integers(0, 0xFFFF),
        st.sampled_from([0, 5, 15]),
    )
    slide = st.tuples(st.just(2), st.integers(0, n))
    ops: list[tuple[int, ...]] = draw(
        st.lists(st.one_of(source, source, repair, repair, slide), max_size=40)
    )
    return max_window, symbol_size, payloads, ops


@given(genuine_schedules())
def test_fuzz_genuine_symbols_never_recover_wrong_data(
    case: tuple[int, int, list[bytes], list[tuple[int, ...]]],
) -> None:
    max_window, symbol_size, payloads, ops = case
    decoder = FecDecoder(symbol_size, max_window)
    delivered: set[int] = set()
    recovered: list[Recovered] = []
    for op in ops:
        if op[0] == 0:
            recovered += decoder.receive_source(op[1], payloads[op[1]])
            delivered.add(op[1])
        elif op[0] == 1:
            _, first, count, key, dt = op
            count = min(count, len(payloads) - first)
            symbol = oracle_repair(payloads, symbol_size, key, first, count, dt)
            recovered += decoder.receive_repair(key, first, count, dt, symbol)
        else:
            decoder.slide(op[1])
        assert decoder.pending_repairs <= max_window
    ids = [r.symbol_id for r in recovered]
    assert len(ids) == len(set(ids))
    for r in recovered:
        assert r.payload == payloads[r.symbol_id]


ids = st.one_of(st.integers(-3, 40), st.integers(2**62 - 3, 2**64))


@given(
    st.integers(1, 6),
    st.integers(3, 16),
    st.lists(
        st.one_of(
            st.tuples(st.just("source"), ids, st.binary(max_size=20)),
            st.tuples(
                st.just("repair"),
                st.integers(-2, 0x10002),
                ids,
                st.integers(-1, 8),
                st.integers(-1, 17),
                st.binary(max_size=20),
            ),
            st.tuples(st.just("slide"), ids),
        ),
        max_size=30,
    ),
)
def test_fuzz_arbitrary_input_raises_only_fec_errors(
    max_window: int, symbol_size: int, ops: list[tuple[object, ...]]
) -> None:
    decoder = FecDecoder(symbol_size, max_window)
    for op in ops:
        try:
            if op[0] == "source":
                decoder.receive_source(*op[1:])  # type: ignore[arg-type]
            elif op[0] == "repair":
                decoder.receive_repair(*op[1:])  # type: ignore[arg-type]
            else:
                decoder.slide(*op[1:])  # type: ignore[arg-type]
        except FecError:
            pass
        assert decoder.pending_repairs <= max_window
        first, end = decoder.window
        assert end - first == max_window
