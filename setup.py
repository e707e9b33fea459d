"""Build the Cython extensions: every .pyx under the netsched packages."""

from pathlib import Path

from Cython.Build import cythonize
from setuptools import setup

# pip runs this from the project root; relative paths keep module names right.
sources = sorted(str(p) for p in Path().glob("netsched_*/**/*.pyx"))
setup(
    ext_modules=cythonize(
        sources, language_level=3, compiler_directives={"boundscheck": False, "wraparound": False}
    )
)
