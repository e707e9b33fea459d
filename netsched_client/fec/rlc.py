"""The RLC codec core in use: the compiled `_rlc` and `tinymt32`, else their pure-Python ports.

`_rlc_py` and `_tinymt32_py` give the same results as the extensions (checked
by tests/test_packaging.py), only slower; `COMPILED` says which are in use.
The rest of the package imports the core from here, never `_rlc` directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from netsched_client import _native

if TYPE_CHECKING:
    from netsched_client.fec._rlc import (
        LENGTH_PREFIX,
        MAX_SYMBOL_ID,
        MAX_SYMBOL_SIZE,
        MAX_WINDOW,
        MIN_SYMBOL_SIZE,
        DecoderCore,
        EncoderCore,
        generate_coding_coefs,
        kernel_name,
        mul_table,
        region_madd,
        set_simd,
    )
    from netsched_client.fec.tinymt32 import TinyMT32

    COMPILED: bool
else:
    _core = _native.load("netsched_client.fec._rlc")
    _prng = _native.load("netsched_client.fec.tinymt32")
    COMPILED = _core is not None and _prng is not None
    if not COMPILED:  # the compiled core cimports the compiled PRNG: both or neither
        from netsched_client.fec import _rlc_py as _core
        from netsched_client.fec import _tinymt32_py as _prng
    LENGTH_PREFIX = _core.LENGTH_PREFIX
    MAX_SYMBOL_ID = _core.MAX_SYMBOL_ID
    MAX_SYMBOL_SIZE = _core.MAX_SYMBOL_SIZE
    MAX_WINDOW = _core.MAX_WINDOW
    MIN_SYMBOL_SIZE = _core.MIN_SYMBOL_SIZE
    DecoderCore = _core.DecoderCore
    EncoderCore = _core.EncoderCore
    generate_coding_coefs = _core.generate_coding_coefs
    kernel_name = _core.kernel_name
    mul_table = _core.mul_table
    region_madd = _core.region_madd
    set_simd = _core.set_simd
    TinyMT32 = _prng.TinyMT32

__all__ = [
    "COMPILED",
    "LENGTH_PREFIX",
    "MAX_SYMBOL_ID",
    "MAX_SYMBOL_SIZE",
    "MAX_WINDOW",
    "MIN_SYMBOL_SIZE",
    "DecoderCore",
    "EncoderCore",
    "TinyMT32",
    "generate_coding_coefs",
    "kernel_name",
    "mul_table",
    "region_madd",
    "set_simd",
]
