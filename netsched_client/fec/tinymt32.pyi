class TinyMT32:
    """One generator instance; `seed` is any 32-bit unsigned integer (0 included)."""

    def __init__(self, seed: int) -> None: ...
    def generate_uint32(self) -> int:
        """The next pseudorandom value in 0..2^32-1."""
