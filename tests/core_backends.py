"""The core's two backends in tests (#16): each module's compiled build and its
pure-Python reference as one parametrized fixture, and the check that the
compiled build exists wherever a compiler does (it must not fall back silently)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

NO_COMPILER = shutil.which("cc") is None or os.environ.get("NETSCHED_NO_EXTENSIONS", "") not in (
    "",
    "0",
)


def backends(facade: ModuleType) -> Any:
    """A fixture `m` that runs a test once per backend of `facade` (its BACKENDS)."""

    @pytest.fixture(params=list(facade.BACKENDS.values()), ids=list(facade.BACKENDS))
    def m(request: pytest.FixtureRequest) -> ModuleType:
        module: ModuleType = request.param
        return module

    return m


def compiled_check(facade: ModuleType) -> Callable[[], None]:
    """A test that `facade` runs its compiled build here, beside the reference."""

    @pytest.mark.skipif(NO_COMPILER, reason="no C compiler here: the reference is expected")
    def test_the_compiled_backend_is_built_here() -> None:
        assert facade.COMPILED
        assert set(facade.BACKENDS) == {"python", "cython"}

    return test_the_compiled_backend_is_built_here
