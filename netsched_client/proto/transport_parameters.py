"""Our transport parameters, appended to and read from aioquic's encoded list.

aioquic keeps its parameter table in a module global; rather than mutate it,
extensions append their parameters after aioquic's and look for them by ID.
"""

from __future__ import annotations

from aioquic.buffer import Buffer, BufferReadError, encode_uint_var


def find_transport_parameter(data: bytes, param_id: int) -> bytes | None:
    """The value of `param_id` in an encoded transport parameter list, if present."""
    buf = Buffer(data=data)
    try:
        while not buf.eof():
            pid = buf.pull_uint_var()
            value = buf.pull_bytes(buf.pull_uint_var())
            if pid == param_id:
                return value
    except BufferReadError:
        return None
    return None


def encode_transport_parameter(param_id: int, value: bytes) -> bytes:
    return encode_uint_var(param_id) + encode_uint_var(len(value)) + value


def decode_varint_value(value: bytes) -> int | None:
    """A parameter value that must be exactly one varint; None when it is not."""
    buf = Buffer(data=value)
    try:
        number = buf.pull_uint_var()
    except BufferReadError:
        return None
    return number if buf.eof() else None
