"""Build the Cython extensions (every .pyx under the netsched packages) when possible.

Each compiled module has a pure-Python fallback that the package chooses at
import time, so a build without Cython or without a working C compiler still
installs a working (slower) package: the extensions are then skipped with a
warning instead of failing the install. NETSCHED_NO_EXTENSIONS=1 skips them on
purpose (a pure-Python build); NETSCHED_REQUIRE_EXTENSIONS=1 makes a module
that does not build fail the install (for CI and wheel builds).
"""

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# pip runs this from the project root; relative paths keep module names right.
SOURCES = sorted(str(p) for p in Path().glob("netsched_*/**/*.pyx"))
DIRECTIVES = {"boundscheck": False, "wraparound": False}


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def _skip(why: str) -> None:
    if _flag("NETSCHED_REQUIRE_EXTENSIONS"):
        raise SystemExit(f"netsched: a compiled module is required but {why}")
    print(
        f"netsched: building without the compiled modules ({why}); "
        "the pure-Python fallbacks will be used",
        file=sys.stderr,
    )


class OptionalBuildExt(build_ext):
    """build_ext that leaves a module out, with a warning, when it does not compile."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all: DistutilsPlatformError and kin
            _skip(f"{type(exc).__name__}: {exc}")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # CompileError, LinkError, a missing header
            _skip(f"{ext.name}: {type(exc).__name__}: {exc}")


def _extensions() -> list[Extension]:
    if _flag("NETSCHED_NO_EXTENSIONS"):
        _skip("NETSCHED_NO_EXTENSIONS is set")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        _skip("Cython is not installed")
        return []
    extensions: list[Extension] = cythonize(
        SOURCES, language_level=3, compiler_directives=DIRECTIVES
    )
    return extensions


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
