"""Sliding-window RLC over GF(2^8) (RFC 8681): region kernels, encoder and decoder cores."""

from typing import Final

_Buffer = bytes | bytearray | memoryview

LENGTH_PREFIX: Final[int]
MAX_WINDOW: Final[int]
MAX_SYMBOL_SIZE: Final[int]
MIN_SYMBOL_SIZE: Final[int]
MAX_SYMBOL_ID: Final[int]

def generate_coding_coefs(repair_key: int, cc_nb: int, dt: int) -> bytes:
    """The `cc_nb` GF(2^8) coefficients RFC 8681 §3.6 derives from a repair key and DT."""

def mul_table() -> bytes:
    """The 256x256 product table of the scalar kernel: byte a*256+b is a*b."""

def region_madd(dst: bytearray | memoryview, src: _Buffer, coef: int) -> None:
    """dst ^= coef * src over GF(2^8), through the kernel in use."""

def set_simd(enabled: bool) -> bool:
    """Use the AVX2 kernel if `enabled` and the CPU has it; returns whether it is in use.

    Process-wide; the default is on when the CPU has AVX2. For tests and benchmarks.
    """

def kernel_name() -> str:
    """The region kernel in use: "avx2-nibble" or "table"."""

class EncoderCore:
    """The last `max_window` source symbols, by consecutive id; repair symbols over runs of them."""

    def __init__(self, symbol_size: int, max_window: int, first_id: int = 0) -> None: ...
    @property
    def symbol_size(self) -> int: ...
    @property
    def max_window(self) -> int: ...
    @property
    def window(self) -> tuple[int, int]: ...
    def add_source(self, symbol_id: int, payload: _Buffer) -> None: ...
    def remove_acked(self, up_to_id: int) -> None: ...
    def repair(self, repair_key: int, first_id: int, count: int, dt: int) -> bytes: ...

class DecoderCore:
    """Source and repair symbols over the window of ids base..base+max_window-1."""

    def __init__(self, symbol_size: int, max_window: int, first_id: int = 0) -> None: ...
    @property
    def symbol_size(self) -> int: ...
    @property
    def max_window(self) -> int: ...
    @property
    def window(self) -> tuple[int, int]: ...
    @property
    def pending(self) -> int: ...
    def is_known(self, symbol_id: int) -> bool: ...
    def receive_source(self, symbol_id: int, payload: _Buffer) -> list[tuple[int, bytes]]: ...
    def receive_repair(
        self, repair_key: int, first_id: int, count: int, dt: int, symbol: _Buffer
    ) -> list[tuple[int, bytes]]: ...
    def slide(self, first_id: int) -> None: ...
    def resize(self, max_window: int) -> None: ...
