"""Which compiled (Cython) modules this installation has, and one warning for those it lacks.

Every compiled module has a pure-Python fallback, chosen at import time where
the module is imported (`load` returns None and the caller takes the
fallback). The first miss warns once, with a `NativeFallbackWarning` that
names every compiled module of the distribution that is missing, so that a
build without a C compiler says so in one line, whichever package is
imported first. The list is found by looking for the files, without
importing anything; an extension that is there but fails to import is
reported by a warning of its own. NETSCHED_NO_EXTENSIONS=1 in the environment
takes the fallbacks for every module (as setup.py builds none with it).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import warnings
from types import ModuleType
from typing import Final

# Every extension setup.py builds (each .pyx), and the pure-Python module used without it.
COMPILED_MODULES: Final = {
    "netsched_client.io._udp": "netsched_client.io.fallback",
    "netsched_client.io._mmsg": "netsched_client.io.fallback",
    "netsched_client.fec._rlc": "netsched_client.fec._rlc_py",
    "netsched_client.fec.tinymt32": "netsched_client.fec._tinymt32_py",
    "netsched_edge.forwarder._relay": "netsched_edge.forwarder.reference",
    "netsched_client.core._packet": "netsched_client.core._packet_py",
    "netsched_client.core._protect": "netsched_client.core._protect_py",
    "netsched_client.core._ledger": "netsched_client.core._ledger_py",
    "netsched_client.core._stream": "netsched_client.core._stream_py",
}


class NativeFallbackWarning(RuntimeWarning):
    """A compiled module is missing: its pure-Python fallback runs instead (slower)."""


_reported: set[str] = set()


def load(name: str) -> ModuleType | None:
    """The compiled module `name`, or None (after the one warning) when it cannot be imported."""
    try:
        if os.environ.get("NETSCHED_NO_EXTENSIONS", "") not in ("", "0"):
            raise ImportError("NETSCHED_NO_EXTENSIONS is set")
        return importlib.import_module(name)
    except ImportError as exc:
        if name not in _reported:
            missing = {name} | {other for other in COMPILED_MODULES if not _is_built(other)}
            if "NETSCHED_NO_EXTENSIONS" in str(exc):
                missing = set(COMPILED_MODULES)
            _warn(sorted(missing - _reported), exc)
        return None


def missing() -> list[str]:
    """The compiled modules of the distribution whose files are not installed."""
    return [name for name in COMPILED_MODULES if not _is_built(name)]


def _warn(names: list[str], exc: ImportError) -> None:
    _reported.update(names)
    warnings.warn(
        f"netsched: compiled modules missing ({', '.join(names)}): using the pure-Python "
        f"fallbacks, which are slower ({exc}); install a wheel, or build with a C "
        "compiler and Cython",
        NativeFallbackWarning,
        stacklevel=3,
    )


def _is_built(name: str) -> bool:
    """Whether an extension file for `name` exists, found without importing its package."""
    top, *middle, leaf = name.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or spec.submodule_search_locations is None:
        return False
    folders = [os.path.join(root, *middle) for root in spec.submodule_search_locations]
    found = importlib.machinery.PathFinder.find_spec(leaf, folders)
    return found is not None and isinstance(found.loader, importlib.machinery.ExtensionFileLoader)
