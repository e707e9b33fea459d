"""Forward erasure correction: RFC 8681 sliding-window RLC over GF(2^8), sans-IO.

`codec` is the API; `_rlc` (Cython) holds the GF(2^8) region kernels and the
encoder/decoder cores, `tinymt32` (Cython) the RFC 8682 PRNG behind the coding
coefficients, `gf256` the field tables. Without the extensions (no C
compiler) `rlc` picks their pure-Python ports, `_rlc_py` and `_tinymt32_py`.
"""

from netsched_client.fec.codec import BytesLike, FecDecoder, FecEncoder, Recovered
from netsched_client.fec.errors import (
    CorruptRepairError,
    FecError,
    FecParameterError,
    SymbolIdError,
    SymbolSizeError,
)
from netsched_client.fec.rlc import (
    LENGTH_PREFIX,
    MAX_SYMBOL_ID,
    MAX_SYMBOL_SIZE,
    MAX_WINDOW,
    MIN_SYMBOL_SIZE,
    TinyMT32,
    generate_coding_coefs,
)

__all__ = [
    "LENGTH_PREFIX",
    "MAX_SYMBOL_ID",
    "MAX_SYMBOL_SIZE",
    "MAX_WINDOW",
    "MIN_SYMBOL_SIZE",
    "BytesLike",
    "CorruptRepairError",
    "FecDecoder",
    "FecEncoder",
    "FecError",
    "FecParameterError",
    "Recovered",
    "SymbolIdError",
    "SymbolSizeError",
    "TinyMT32",
    "generate_coding_coefs",
]
