"""Errors of the FEC codec: every one is a `ValueError` about input we were given.

Kept apart from `codec.py` so that the Cython core raises the same classes as
the Python layer above it, each check living in the one place that consumes
the value.
"""

from __future__ import annotations

from netsched_client.errors import NetSchedError


class FecError(NetSchedError, ValueError):
    """Malformed FEC input, from the peer or from the caller."""


class FecParameterError(FecError):
    """A codec parameter (symbol size, window, repair key, DT, count) is out of range."""


class SymbolSizeError(FecError):
    """A source payload or repair symbol does not fit the configured symbol size."""


class SymbolIdError(FecError):
    """A symbol id or id range lies outside what the window holds or can hold."""


class CorruptRepairError(FecError):
    """A repair symbol contradicts the data we hold, or decoded to a malformed symbol.

    The decoder stays consistent after this error, but the peer's encoder is
    broken: symbols recovered in the same call are withheld, never guessed.
    """
