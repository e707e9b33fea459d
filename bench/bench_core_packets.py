"""The core's packet layer (#16 stage 1): per-packet cost against aioquic's own path, same run.

A packet is one 1452-byte datagram: a 1-RTT short header (8-byte DCID,
2-byte packet number), 1425 bytes of payload, the 16-byte tag.

- receive: parse + open. Ours: `parse_buffer` over a GRO buffer of `--batch`
  datagrams, then `PacketProtection.open` per record. aioquic's:
  `pull_quic_header` + `CryptoPair.decrypt_packet` per datagram (what its
  `receive_datagram` does before the frames).
- send: build + seal. Ours: `encode_packet_number` + `build_short_header` +
  `PacketProtection.seal`. aioquic's: `QuicPacketBuilder` (start_packet, one
  STREAM frame's bytes, flush every `--batch` packets).

Then the crypto alone (seal and open of the same packet), per way to call
it: our OpenSSL EVP contexts from Cython; the `cryptography` package's AEAD
and a cached header-protection cipher (the pure-Python reference); aioquic
1.7.2's `_crypto` (a Python module over `cryptography`, no C extension).
Each number is the best of `--rounds` rounds (the least disturbed one);
ratios are printed because absolute numbers drift on a shared machine.

    python bench/bench_core_packets.py [--packets 4000] [--batch 64] [--rounds 7]
                                       [--cipher aes-128-gcm]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from aioquic._crypto import AEAD, HeaderProtection
from aioquic.buffer import Buffer
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import QuicPacketType, pull_quic_header
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.tls import CipherSuite
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from netsched_client.core import packet, protection
from netsched_client.core.keys import packet_keys

DATAGRAM = 1452
DCID = bytes.fromhex("0102030405060708")
HEADER = 1 + len(DCID) + 2
PAYLOAD = DATAGRAM - HEADER - 16
SUITES = {
    "aes-128-gcm": (0x1301, CipherSuite.AES_128_GCM_SHA256),
    "aes-256-gcm": (0x1302, CipherSuite.AES_256_GCM_SHA384),
    "chacha20-poly1305": (0x1303, CipherSuite.CHACHA20_POLY1305_SHA256),
}
STREAM_FRAME = 0x0E  # STREAM with offset and length
FIRST_PN = 1000


def best_us(run: Callable[[], object], packets: int, rounds: int) -> float:
    """Best µs per packet over `rounds` rounds of `run`, which handles `packets` packets."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        best = min(best, (time.perf_counter() - start) / packets * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cipher", choices=list(SUITES), default="aes-128-gcm")
    args = parser.parse_args()
    n = args.packets - args.packets % args.batch
    suite, tls_suite = SUITES[args.cipher]
    secret = bytes(range(48))[: 48 if suite == 0x1302 else 32]
    keys = packet_keys(packet.VERSION_1, suite, secret)
    payload = bytes(i * 7 & 0xFF for i in range(PAYLOAD))

    # aioquic's send path builds the reference packets; ours must produce the same bytes.
    theirs = CryptoPair()
    theirs.send.setup(cipher_suite=tls_suite, secret=secret, version=packet.VERSION_1)
    theirs.recv.setup(cipher_suite=tls_suite, secret=secret, version=packet.VERSION_1)

    def aioquic_send() -> list[bytes]:
        builder = QuicPacketBuilder(
            host_cid=DCID,
            peer_cid=DCID,
            version=packet.VERSION_1,
            is_client=True,
            max_datagram_size=DATAGRAM,
        )
        out: list[bytes] = []
        for _ in range(0, n, args.batch):
            for _ in range(args.batch):
                builder.start_packet(QuicPacketType.ONE_RTT, theirs)
                buf = builder.start_frame(STREAM_FRAME, capacity=builder.remaining_flight_space)
                buf.push_bytes(payload[: builder.remaining_buffer_space])
            datagrams, _ = builder.flush()
            out += datagrams
        return out

    sample = aioquic_send()
    assert all(len(d) == DATAGRAM for d in sample), {len(d) for d in sample}
    header_length = HEADER  # aioquic sends 2-byte packet numbers, as we do here

    print(f"{args.cipher}, {DATAGRAM}-byte packets, {n} a round, batches of {args.batch}")
    print(f"backends: packet {sorted(packet.BACKENDS)}, protection {sorted(protection.BACKENDS)}")
    results: dict[str, dict[str, float]] = {}
    for name in protection.BACKENDS:
        pk, pr = packet.BACKENDS[name], protection.BACKENDS[name]
        ours = pr.PacketProtection(keys.cipher, keys.key, keys.iv, keys.hp_key)
        plain = payload[: DATAGRAM - header_length - 16]

        def our_send(pk: object = pk, ours: object = ours, plain: bytes = plain) -> list[bytes]:
            out = []
            encode, build, seal = pk.encode_packet_number, pk.build_short_header, ours.seal  # type: ignore[attr-defined]
            for pn in range(FIRST_PN, FIRST_PN + n):
                truncated, length = encode(pn, pn - 1000)  # 1,000 in flight: 2 bytes
                out.append(seal(build(DCID, truncated, length), plain, pn))
            return out

        sent = our_send()
        assert len(sent[0]) == DATAGRAM
        assert theirs.decrypt_packet(sent[-1], 1 + len(DCID), FIRST_PN + n - 1)[1] == plain
        gro = b"".join(sent)

        def our_receive(pk: object = pk, ours: object = ours, gro: bytes = gro) -> int:
            view = memoryview(gro)
            records = pk.parse_buffer(gro, DATAGRAM, len(DCID))  # type: ignore[attr-defined]
            fields, f_off, f_len, f_pn = (
                pk.RECORD_FIELDS,  # type: ignore[attr-defined]
                pk.F_OFFSET,  # type: ignore[attr-defined]
                pk.F_LENGTH,  # type: ignore[attr-defined]
                pk.F_PN_OFFSET,  # type: ignore[attr-defined]
            )
            open_ = ours.open  # type: ignore[attr-defined]
            largest = FIRST_PN - 1
            total = 0
            for i in range(0, len(records), fields):
                off = records[i + f_off]
                _, largest, plain = open_(
                    view[off : off + records[i + f_len]], records[i + f_pn] - off, largest
                )
                total += len(plain)
            return total

        assert our_receive() == n * len(plain)
        results[name] = {
            "send": best_us(our_send, n, args.rounds),
            "receive": best_us(our_receive, n, args.rounds),
        }

    def aioquic_receive(datagrams: list[bytes] = sample) -> int:
        total = 0
        expected = 0
        for data in datagrams:
            buf = Buffer(data=data)
            pull_quic_header(buf, host_cid_length=len(DCID))
            _, plain, pn = theirs.decrypt_packet(data, buf.tell(), expected)
            expected = pn + 1
            total += len(plain)
        return total

    assert aioquic_receive() == n * (DATAGRAM - header_length - 16)
    results["aioquic"] = {
        "send": best_us(aioquic_send, n, args.rounds),
        "receive": best_us(aioquic_receive, n, args.rounds),
    }

    print(
        f"\n{'µs per packet':<22}{'build+seal':>12}{'parse+open':>12}{'send x':>10}{'recv x':>10}"
    )
    base = results["aioquic"]
    for name, r in results.items():
        print(
            f"{'ours (' + name + ')' if name != 'aioquic' else 'aioquic 1.7.2':<22}"
            f"{r['send']:>12.2f}{r['receive']:>12.2f}"
            f"{base['send'] / r['send']:>9.1f}x{base['receive'] / r['receive']:>9.1f}x"
        )

    # -- the crypto alone: seal and open of one packet, per way of calling it -------------------
    header = packet.build_short_header(DCID, 5, 2)
    body = payload[: DATAGRAM - len(header) - 16]
    calls = n
    rows: dict[str, tuple[float, float]] = {}
    for name, pr in protection.BACKENDS.items():
        p = pr.PacketProtection(keys.cipher, keys.key, keys.iv, keys.hp_key)
        sealed = p.seal(header, body, 5)

        def seal(p: object = p) -> None:
            for _ in range(calls):
                p.seal(header, body, 5)  # type: ignore[attr-defined]

        def open_(p: object = p, sealed: bytes = sealed) -> None:
            for _ in range(calls):
                p.open(sealed, 9, 4)  # type: ignore[attr-defined]

        label = "OpenSSL EVP (Cython)" if name == "cython" else "cryptography (our reference)"
        rows[label] = (best_us(seal, calls, args.rounds), best_us(open_, calls, args.rounds))

    # cryptography's AEAD with a header-protection cipher keyed once: the fastest way through it.
    aead = ChaCha20Poly1305(keys.key) if suite == 0x1303 else AESGCM(keys.key)
    nonce = bytes(12)
    if suite == 0x1303:

        def mask(sample: bytes) -> bytes:
            return (
                Cipher(algorithms.ChaCha20(keys.hp_key, sample), None).encryptor().update(bytes(5))
            )
    else:
        ecb = Cipher(algorithms.AES(keys.hp_key), modes.ECB()).encryptor()

        def mask(sample: bytes) -> bytes:
            return ecb.update(sample)

    ct = aead.encrypt(nonce, body, header)

    def crypt_seal() -> None:
        for _ in range(calls):
            c = aead.encrypt(nonce, body, header)
            mask(c[2:18])

    def crypt_open() -> None:
        for _ in range(calls):
            mask(ct[2:18])
            aead.decrypt(nonce, ct, header)

    rows["cryptography, keyed once"] = (
        best_us(crypt_seal, calls, args.rounds),
        best_us(crypt_open, calls, args.rounds),
    )
    aq_aead = AEAD(args.cipher.encode(), keys.key, keys.iv)
    hp_name = b"chacha20" if suite == 0x1303 else args.cipher.replace("gcm", "ecb").encode()
    aq_hp = HeaderProtection(hp_name, keys.hp_key)
    protected = aq_hp.apply(header, aq_aead.encrypt(body, header, 5))

    def aq_seal() -> None:
        for _ in range(calls):
            aq_hp.apply(header, aq_aead.encrypt(body, header, 5))

    def aq_open() -> None:
        for _ in range(calls):
            plain_header, _ = aq_hp.remove(protected, 9)
            aq_aead.decrypt(protected[len(plain_header) :], plain_header, 5)

    rows["aioquic._crypto"] = (
        best_us(aq_seal, calls, args.rounds),
        best_us(aq_open, calls, args.rounds),
    )
    print(f"\n{'crypto, µs per packet':<28}{'seal':>8}{'open':>8}")
    for label, (s, o) in rows.items():
        print(f"{label:<28}{s:>8.2f}{o:>8.2f}")


if __name__ == "__main__":
    main()
