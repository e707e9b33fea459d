"""The native connection core (#16), built in stages; see docs/CORE.md.

Stage 1, the packet layer: `packet` (varints, packet numbers, headers, batch
parsing, ACK ranges and frames), `protection` (AEAD and header protection of
packets, the multipath nonce) and `keys` (Initial and 1-RTT key derivation).
Each has a compiled module and a pure-Python reference of the same API;
nothing in the connections uses the core yet.
"""
