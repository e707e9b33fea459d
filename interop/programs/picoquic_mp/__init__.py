"""picoquic (aiopquic 0.6.1 bundles picoquic 1.1.53) as a multipath peer, through its C API.

Runs under Python 3.12 in the picoquic peer's venv and imports only the
standard library and aiopquic (`capi` loads its shared object). `endpoint`
plays the interop runner's mp-* test cases (from `programs/picoquic_peer.py`);
`server` and `client` are also command-line programs for
tests/test_picoquic_multipath.py, which drives them over stdin/stdout.
"""
