"""FEC codec speed: µs per repair symbol and per recovered symbol, Cython vs the oracle.

Both run in the same process and the same run; the ratio is printed because
absolute numbers drift on shared machines. The Cython codec is measured with
each region kernel (AVX2 split-nibble when the CPU has it, 256x256 table).

    python bench/bench_fec.py [--symbol-size 1200] [--windows 4,16,32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

from netsched_client.fec import FecDecoder, FecEncoder, _rlc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import fec_reference as ref  # the oracle lives with the tests

TARGET_US = 5.0  # per repair symbol at window 16


def best_us(run: Callable[[], object], calls: int, rounds: int) -> float:
    """Best mean over `rounds` rounds of `calls` calls: the least disturbed round."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            run()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def kernels() -> list[str]:
    names = ["table"]
    if _rlc.set_simd(True):
        names.insert(0, _rlc.kernel_name())
    _rlc.set_simd(False)
    return names


def use_kernel(name: str) -> None:
    _rlc.set_simd(name != "table")


def encode_us(symbol_size: int, window: int, rounds: int) -> tuple[dict[str, float], float]:
    payloads = [os.urandom(symbol_size - 2) for _ in range(window)]
    encoder = FecEncoder(symbol_size, window)
    for symbol_id, payload in enumerate(payloads):
        encoder.add_source(symbol_id, payload)
    cython = {}
    for name in kernels():
        use_kernel(name)
        cython[name] = best_us(lambda: encoder.repair(7, 0, window), 2000, rounds)
    symbols = [ref.source_symbol(p, symbol_size) for p in payloads]
    oracle = best_us(lambda: ref.repair_symbol(symbols, 7, 15), 50, rounds)
    return cython, oracle


def decode_us(symbol_size: int, window: int, rounds: int) -> tuple[dict[str, float], float]:
    """µs per recovered symbol: repairs arriving after the surviving sources (25 % lost)."""
    rng = random.Random(window)
    payloads = [rng.randbytes(symbol_size - 2) for _ in range(window)]
    encoder = FecEncoder(symbol_size, window)
    for symbol_id, payload in enumerate(payloads):
        encoder.add_source(symbol_id, payload)
    lost = set(rng.sample(range(window), max(1, window // 4)))
    received = {i: p for i, p in enumerate(payloads) if i not in lost}
    repairs = [ref.Repair(key, 0, window, 15, encoder.repair(key, 0, window)) for key in lost]

    def sources_only() -> FecDecoder:
        decoder = FecDecoder(symbol_size, window)
        for symbol_id, payload in received.items():
            decoder.receive_source(symbol_id, payload)
        return decoder

    def full() -> None:
        decoder = sources_only()
        recovered = []
        for r in repairs:
            recovered += decoder.receive_repair(r.repair_key, 0, window, 15, r.symbol)
        assert len(recovered) == len(lost)

    cython = {}
    for name in kernels():
        use_kernel(name)
        spent = best_us(full, 300, rounds) - best_us(sources_only, 300, rounds)
        cython[name] = spent / len(lost)
    oracle = best_us(lambda: ref.decode(symbol_size, received, repairs), 5, rounds) / len(lost)
    return cython, oracle


def region_us(symbol_size: int, rounds: int) -> dict[str, float]:
    dst, src = bytearray(os.urandom(symbol_size)), os.urandom(symbol_size)
    out = {}
    for name in kernels():
        use_kernel(name)
        out[name] = best_us(lambda: _rlc.region_madd(dst, src, 0x53), 20000, rounds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbol-size", type=int, default=1200)
    parser.add_argument("--windows", default="4,16,32")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    size, rounds = args.symbol_size, args.rounds
    names = kernels()
    default = names[0]

    print(f"symbol size {size} B; kernels: {', '.join(names)}; best of {rounds} rounds")
    region = region_us(size, rounds)
    print("one symbol += coef * symbol: " + ", ".join(f"{k} {v:.3f} µs" for k, v in region.items()))
    header = f"{'':24}{'window':>7}" + "".join(f"{k:>14}" for k in names)
    print(f"\n{header}{'oracle':>12}{'oracle/' + default:>20}")
    verdict = ""
    for label, measure in (("µs / repair symbol", encode_us), ("µs / recovered symbol", decode_us)):
        for window in (int(w) for w in args.windows.split(",")):
            cython, oracle = measure(size, window, rounds)
            cells = "".join(f"{cython[k]:>14.2f}" for k in names)
            print(f"{label:24}{window:>7}{cells}{oracle:>12.1f}{oracle / cython[default]:>19.0f}x")
            if measure is encode_us and window == 16:
                ok = cython[default] <= TARGET_US
                verdict = (
                    f"target ≤ {TARGET_US} µs per repair symbol at window 16 ({default}): "
                    f"{cython[default]:.2f} µs, {'met' if ok else 'MISSED'}"
                )
    use_kernel(default)
    if verdict:
        print("\n" + verdict)


if __name__ == "__main__":
    main()
