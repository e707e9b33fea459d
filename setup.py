"""Build the Cython extensions: every .pyx under the netsched packages."""

from pathlib import Path

from Cython.Build import cythonize
from setuptools import setup

sources = sorted(str(p) for p in Path(__file__).parent.glob("netsched_*/**/*.pyx"))
setup(
    ext_modules=cythonize(
        sources, language_level=3, compiler_directives={"boundscheck": False, "wraparound": False}
    )
)
