"""picoquic (aiopquic 0.6.1 bundles picoquic 1.1.53) as a multipath interop peer.

`install` runs in the test process. The others (`capi`, `loop`, `server`,
`client`) run under Python 3.12 in the aiopquic venv, as
`python -m picoquic_mp.server|client` with this folder's parent on PYTHONPATH,
and import only the standard library and aiopquic.
"""
