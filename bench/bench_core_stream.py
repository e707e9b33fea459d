"""The core's streams (#16 stage 3): µs per STREAM frame against aioquic's, same run.

One workload for all: the application writes `--payload` bytes (1180 by
default: a STREAM frame of at most 1200 bytes with its header), the sender
frames them into a 1200-byte packet buffer, the receiver parses the frame
from that buffer, reassembles it and the application reads it, and the
frame is acknowledged to the sender (which frees its buffer). With
`--reorder` (a second set of rows) every pair of frames arrives swapped, so
each second frame waits in the receive buffer for the one before it.

- ours: `SendStream.write`, `SendStream.write_frame` (into the packet
  buffer), `parse_stream`, `RecvStream.on_data` (into its ring),
  `RecvStream.read`, `SendStream.on_acked`, and the stream's flow control
  (`window_update`, the sender's `credit.raise_limit`) — Cython, then the
  pure-Python reference;
- aioquic 1.7.2: `QuicStreamSender.write`, `get_frame`, the frame written
  into a `Buffer` as its connection writes it, read back as its connection
  reads it (`pull_uint_var`, `pull_bytes`, a `QuicStreamFrame`),
  `QuicStreamReceiver.handle_frame` (which returns the data read in a
  `StreamDataReceived`), `on_data_delivery`. Its flow control lives in its
  connection and is not counted.

Each number is the best of `--rounds` rounds; ratios are printed because
absolute numbers drift on a shared machine.

    python bench/bench_core_stream.py [--frames 20000] [--payload 1180] [--rounds 7]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from types import ModuleType

from aioquic.buffer import Buffer
from aioquic.quic.packet import QuicStreamFrame
from aioquic.quic.packet_builder import QuicDeliveryState
from aioquic.quic.stream import QuicStream

from netsched_client.core import stream

SIZE = 1200
WINDOW = 1 << 20
RTT = 0.02
SPACING = 1e-5


def order(frames: int, reorder: bool) -> list[int]:
    """The order frames arrive in: as sent, or each pair swapped."""
    arrival = list(range(frames))
    if reorder:
        for i in range(0, frames - 1, 2):
            arrival[i], arrival[i + 1] = arrival[i + 1], arrival[i]
    return arrival


def holding(frames: int, reorder: bool) -> Callable[[int], bool]:
    """Whether frame i waits to arrive after the next one (the first of a swapped pair)."""
    return lambda i: reorder and not i & 1 and i + 1 < frames


def ours(backend: ModuleType, frames: int, payload: bytes, reorder: bool) -> Callable[[], int]:
    arrival = order(frames, reorder)
    held_back = holding(frames, reorder)

    def run() -> int:
        connection = backend.SendCredit(backend.MAX_STREAM_OFFSET)
        sender = backend.SendStream(0, WINDOW)
        receiver = backend.RecvStream(WINDOW)
        packets = [bytearray(SIZE), bytearray(SIZE)]
        sent: list[tuple[int, int, bool, int]] = [(0, 0, False, 0)] * 2
        read = 0
        for i in range(frames):
            sender.write(payload)
            framed = sender.write_frame(packets[i & 1], 0, SIZE, connection)
            assert framed is not None
            sent[i & 1] = framed
            if held_back(i):
                continue
            for j in arrival[i - 1 : i + 1] if reorder and i & 1 else (i,):
                buf = packets[j & 1]
                _, offset, data_offset, length, fin, _ = backend.parse_stream(
                    buf, 0, sent[j & 1][3]
                )
                receiver.on_data(buf, data_offset, length, offset, fin)
                read += len(receiver.read())
                sender.on_acked(offset, length, fin)
            limit = receiver.window_update(i * SPACING, RTT)
            if limit >= 0:
                sender.credit.raise_limit(limit)
        return read

    return run


def aioquic(frames: int, payload: bytes, reorder: bool) -> Callable[[], int]:
    arrival = order(frames, reorder)
    held_back = holding(frames, reorder)

    def run() -> int:
        quic_stream = QuicStream(stream_id=0, max_stream_data_local=WINDOW)
        sender, receiver = quic_stream.sender, quic_stream.receiver
        packets: list[bytes] = [b"", b""]
        read = 0
        for i in range(frames):
            sender.write(payload)
            frame = sender.get_frame(SIZE - 4 - 8)  # type, stream ID, 8-byte offset, length
            assert frame is not None
            buf = Buffer(capacity=SIZE)
            buf.push_uint_var(0x0E | frame.fin)
            buf.push_uint_var(0)
            buf.push_uint_var(frame.offset)
            buf.push_uint16(len(frame.data) | 0x4000)
            buf.push_bytes(frame.data)
            packets[i & 1] = buf.data
            if held_back(i):
                continue
            for j in arrival[i - 1 : i + 1] if reorder and i & 1 else (i,):
                incoming = Buffer(data=packets[j & 1])
                frame_type = incoming.pull_uint_var()
                incoming.pull_uint_var()
                offset = incoming.pull_uint_var() if frame_type & 4 else 0
                length = incoming.pull_uint_var()
                parsed = QuicStreamFrame(
                    offset=offset, data=incoming.pull_bytes(length), fin=bool(frame_type & 1)
                )
                event = receiver.handle_frame(parsed)
                read += len(event.data) if event is not None else 0
                sender.on_data_delivery(
                    QuicDeliveryState.ACKED, offset, offset + length, parsed.fin
                )
        return read

    return run


def best_us(run: Callable[[], int], frames: int, rounds: int, expected: int) -> float:
    """Best µs per frame over `rounds` rounds of `run`, which must read `expected` bytes."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        read = run()
        best = min(best, time.perf_counter() - start)
        assert read == expected, (read, expected)
    return best / frames * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--payload", type=int, default=1180)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    payload = bytes(range(256)) * (args.payload // 256) + bytes(args.payload % 256)
    fast = "ours (Cython)" if stream.COMPILED else "ours (no Cython build)"
    fast_backend = stream.BACKENDS["cython" if stream.COMPILED else "python"]
    print(
        f"µs per STREAM frame (write + frame + parse + reassemble + read + ack), "
        f"{args.frames} frames of {args.payload} bytes in {SIZE}-byte packets; "
        f"best of {args.rounds}"
    )
    for reorder in (False, True):
        rows = {
            fast: ours(fast_backend, args.frames, payload, reorder),
            "ours (pure-Python reference)": ours(
                stream.BACKENDS["python"], args.frames, payload, reorder
            ),
            "aioquic 1.7.2 QuicStream": aioquic(args.frames, payload, reorder),
        }
        expected = args.frames * args.payload
        results = {
            name: best_us(run, args.frames, args.rounds, expected) for name, run in rows.items()
        }
        print("pairs swapped" if reorder else "in order")
        for name, us in results.items():
            print(f"  {name:32s} {us:7.3f}")
        ratio = results["aioquic 1.7.2 QuicStream"] / results[fast]
        print(f"  {'ratio aioquic / ' + fast:32s} {ratio:7.1f}x")


if __name__ == "__main__":
    main()
