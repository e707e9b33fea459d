"""The package as a user installs it: license, wheel and sdist contents, pure-Python fallbacks.

The install tests build from a copy of the source tree into temporary venvs
(never touching the project's own venv or tree): an sdist installed with a C
compiler that always fails (`CC=/bin/false`) must install, import and code,
and an editable install in compat mode must be visible to `mypy --strict`.
The runtime dependencies come from this venv's site-packages through a .pth
file, so only netsched itself is built. Building needs PyPI (setuptools and
Cython for the isolated build environment), as `pip install` itself does.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
from collections.abc import Callable, Iterator
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

import netsched_client
import netsched_edge
from netsched_client import _native
from netsched_client.fec import _rlc_py, _tinymt32_py, rlc

ROOT = Path(__file__).resolve().parent.parent
SITE_PACKAGES = sysconfig.get_paths()["purelib"]
MYPY = [sys.executable, "-m", "mypy", "--strict", "--no-incremental"]


def _pip_install(python: Path) -> list[str | Path]:
    return [python, "-m", "pip", "install", "--no-deps"]


# -- metadata ------------------------------------------------------------------


def test_license_file_and_spdx_expression() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'license = "Apache-2.0"' in pyproject and 'license-files = ["LICENSE"]' in pyproject


def test_version_comes_from_the_distribution() -> None:
    assert netsched_client.__version__ == version("netsched")
    assert netsched_edge.__version__ == version("netsched")


def test_exports_load_on_first_use_and_the_cli_starts_without_the_sdk() -> None:
    code = (
        "import sys, netsched_client.cli\n"
        "assert 'netsched_client.runtime.session' not in sys.modules\n"
        "assert 'aioquic' not in sys.modules and 'asyncio' not in sys.modules\n"
        "import netsched_client as n\n"
        "missing = [name for name in n.__all__ if getattr(n, name, None) is None]\n"
        "assert not missing, missing\n"
        "assert set(n.__all__) <= set(dir(n)) and n.fec.FecEncoder and n.errors.Status\n"
        "assert not hasattr(n, 'no_such_name')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr


# -- pure-Python fallbacks equal the compiled modules ----------------------------

compiled = pytest.mark.skipif(not rlc.COMPILED, reason="the Cython modules are not built")


@pytest.mark.skipif(
    shutil.which("cc") is None or os.environ.get("NETSCHED_NO_EXTENSIONS", "") not in ("", "0"),
    reason="no C compiler here: the fallbacks are the expected outcome",
)
def test_a_machine_with_a_compiler_has_every_compiled_module() -> None:
    """setup.py skips a module that fails to build; where a compiler exists, none may be missing."""
    assert _native.missing() == []
    assert rlc.COMPILED


def _outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return ("ok", call())
    except Exception as exc:
        return (type(exc).__name__, str(exc))


@compiled
def test_tinymt32_fallback_equals_compiled() -> None:
    from netsched_client.fec.tinymt32 import TinyMT32

    rng = random.Random(8682)
    for seed in [0, 1, 0xFFFFFFFF, *(rng.getrandbits(32) for _ in range(300))]:
        ours, theirs = _tinymt32_py.TinyMT32(seed), TinyMT32(seed)
        assert [ours.generate_uint32() for _ in range(64)] == [
            theirs.generate_uint32() for _ in range(64)
        ]
    for bad in (-1, 1 << 32):
        assert _outcome(partial(_tinymt32_py.TinyMT32, bad)) == _outcome(partial(TinyMT32, bad))


@compiled
def test_rlc_fallback_functions_equal_compiled() -> None:
    from netsched_client.fec import _rlc

    assert _rlc_py.mul_table() == _rlc.mul_table()
    for name in ("LENGTH_PREFIX", "MAX_WINDOW", "MAX_SYMBOL_SIZE", "MIN_SYMBOL_SIZE"):
        assert getattr(_rlc_py, name) == getattr(_rlc, name)
    assert _rlc_py.MAX_SYMBOL_ID == _rlc.MAX_SYMBOL_ID
    rng = random.Random(8681)
    for _ in range(300):
        args = (rng.randint(-2, 0x10001), rng.randint(-1, 300), rng.randint(-1, 16))
        assert _outcome(partial(_rlc_py.generate_coding_coefs, *args)) == _outcome(
            partial(_rlc.generate_coding_coefs, *args)
        )
        size, coef = rng.randint(0, 100), rng.randint(-1, 256)
        dst, src = rng.randbytes(size), rng.randbytes(size if rng.random() < 0.9 else size + 1)
        mine, theirs = bytearray(dst), bytearray(dst)
        assert _outcome(partial(_rlc_py.region_madd, mine, src, coef)) == _outcome(
            partial(_rlc.region_madd, theirs, src, coef)
        )
        assert mine == theirs


def _scenario(seed: int) -> int:
    """One random run of encoder and decoder, both kinds side by side; calls compared."""
    from netsched_client.fec import _rlc

    rng = random.Random(seed)
    size = rng.choice([3, 4, 7, 32, 33, 100])
    window = rng.choice([1, 2, 3, 5, 8, 16, 40])
    first = rng.choice([0, 5, 1000])
    encoders = [m.EncoderCore(size, window, first) for m in (_rlc, _rlc_py)]
    decoders = [m.DecoderCore(size, window, first) for m in (_rlc, _rlc_py)]
    calls = 0

    def same(objects: list[Any], method: str, *args: Any) -> tuple[str, Any]:
        nonlocal calls
        results = [_outcome(lambda o=o: getattr(o, method)(*args)) for o in objects]
        assert results[0] == results[1], (seed, method, args, results)
        calls += 1
        return results[0]

    next_id = first
    for _ in range(rng.randint(5, 80)):
        op = rng.random()
        if op < 0.45:
            payload = rng.randbytes(rng.randint(0, size - 1))
            if same(encoders, "add_source", next_id, payload)[0] == "ok":
                if rng.random() < 0.5:
                    same(decoders, "receive_source", next_id, payload)
                next_id += 1
        elif op < 0.8:
            low, high = encoders[0].window
            if high == low:
                continue
            start = rng.randint(low, high - 1)
            count, key, dt = (
                rng.randint(1, high - start),
                rng.randint(0, 0xFFFF),
                rng.randint(0, 15),
            )
            kind, symbol = same(encoders, "repair", key, start, count, dt)
            if kind != "ok" or rng.random() < 0.1:
                symbol = rng.randbytes(size)  # a corrupt repair
            same(decoders, "receive_repair", key, start, count, dt, symbol)
        elif op < 0.85:
            same(encoders, "remove_acked", next_id - rng.randint(0, 3))
        elif op < 0.9:
            same(decoders, "slide", next_id - rng.randint(0, window + 2))
        elif op < 0.95:
            same(decoders, "resize", rng.randint(1, 50))
        else:
            bad = (rng.randint(-1, 70000), next_id - 3, rng.randint(0, 3), rng.randint(-1, 16))
            same(encoders, "repair", *bad)
        for attr in ("window", "max_window", "symbol_size"):
            assert getattr(encoders[0], attr) == getattr(encoders[1], attr)
            assert getattr(decoders[0], attr) == getattr(decoders[1], attr)
        assert decoders[0].pending == decoders[1].pending
        for symbol_id in range(max(0, next_id - 50), next_id + 5):
            assert decoders[0].is_known(symbol_id) == decoders[1].is_known(symbol_id)
    return calls


@compiled
def test_rlc_fallback_cores_equal_compiled_on_random_runs() -> None:
    """Same repair symbols, same recovered ids and payloads in order, same errors and windows."""
    calls = sum(_scenario(seed) for seed in range(600))
    assert calls > 10_000


def test_fallbacks_chosen_with_one_warning_naming_every_module() -> None:
    code = (
        "import netsched_client, netsched_client.io as io, netsched_edge.forwarder as fw\n"
        "from netsched_client.fec import rlc, FecEncoder, FecDecoder\n"
        "assert not rlc.COMPILED and not io.HAVE_NATIVE and not fw.HAVE_NATIVE\n"
        "assert rlc.kernel_name() == 'python'\n"
        "enc, dec = FecEncoder(64, 8), FecDecoder(64, 8)\n"
        "for i in range(4): enc.add_source(i, bytes([i]) * 10)\n"
        "for i in (0, 1, 3): dec.receive_source(i, bytes([i]) * 10)\n"
        "got = dec.receive_repair(7, 0, 4, 15, enc.repair(7, 0, 4, 15))\n"
        "assert [(r.symbol_id, r.payload) for r in got] == [(2, bytes([2]) * 10)], got\n"
    )
    env = {**os.environ, "NETSCHED_NO_EXTENSIONS": "1"}
    run = subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("NativeFallbackWarning") == 1, run.stderr
    for name in _native.COMPILED_MODULES:
        assert name in run.stderr


# -- building and installing -----------------------------------------------------


def _source_copy(dest: Path) -> Path:
    """The project's files (as git lists them) plus any generated .c and built .so lying around."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    generated = [
        str(p.relative_to(ROOT))
        for pattern in ("netsched_*/**/*.c", "netsched_*/**/*.so")
        for p in ROOT.glob(pattern)
    ]
    tree = dest / "src"
    for name in {*files, *generated}:
        if (ROOT / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
    return tree


def _venv(path: Path) -> Path:
    """A fresh venv that sees this venv's packages (the dependencies) after its own."""
    venv.create(path, with_pip=True)
    python = path / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "zz_netsched_deps.pth").write_text(SITE_PACKAGES + "\n")
    return python


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    work = tmp_path_factory.mktemp("sdist")
    tree = _source_copy(work)
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "-o", str(work / "dist"), str(tree)],
        capture_output=True,
        check=True,
        timeout=120,
    )
    (archive,) = (work / "dist").glob("netsched-*.tar.gz")
    yield archive


def test_sdist_ships_cython_sources_not_generated_c(sdist: Path) -> None:
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    assert any(n.endswith("/LICENSE") for n in names)
    pyx = {n.rsplit("/", 1)[1] for n in names if n.endswith(".pyx")}
    assert pyx == {
        "_rlc.pyx",
        "tinymt32.pyx",
        "_udp.pyx",
        "_mmsg.pyx",
        "_relay.pyx",
        "_packet.pyx",
        "_protect.pyx",
        "_ledger.pyx",
        "_stream.pyx",
    }
    assert any(n.endswith("fec/_rlc.pxd") for n in names)
    assert not [n for n in names if n.endswith((".c", ".so"))]
    assert not [n for n in names if "/tests/" in n]  # they need the repository around them


@pytest.mark.timeout(180)
def test_sdist_installs_and_works_without_a_c_compiler(sdist: Path, tmp_path: Path) -> None:
    python = _venv(tmp_path / "venv")
    env = {**os.environ, "CC": "/bin/false", "CXX": "/bin/false"}
    env.pop("NETSCHED_NO_EXTENSIONS", None)
    install = subprocess.run(
        [*_pip_install(python), str(sdist)],
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    site = Path(
        subprocess.run(
            [python, "-c", "import netsched_client; print(netsched_client.__file__)"],
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp_path,
        ).stdout.strip()
    ).parent.parent
    assert str(site).startswith(str(tmp_path))  # this install, not the project's tree
    # What the wheel built from the sdist put there: no sources to compile, stubs and py.typed.
    installed = [p for top in ("netsched_client", "netsched_edge") for p in (site / top).rglob("*")]
    assert not [p for p in installed if p.suffix in (".c", ".pyx", ".pxd", ".so")]
    assert (site / "netsched_client" / "py.typed").exists()
    assert (site / "netsched_client" / "fec" / "_rlc.pyi").exists()
    (dist_info,) = site.glob("netsched-*.dist-info")
    assert (dist_info / "licenses" / "LICENSE").exists()
    assert "License-Expression: Apache-2.0" in (dist_info / "METADATA").read_text()

    code = (
        "import warnings\n"
        "from netsched_client.fec import rlc, FecEncoder, FecDecoder\n"
        "assert not rlc.COMPILED\n"
        "enc, dec = FecEncoder(32, 4), FecDecoder(32, 4)\n"
        "for i in range(3): enc.add_source(i, b'p%d' % i)\n"
        "dec.receive_source(0, b'p0'); dec.receive_source(2, b'p2')\n"
        "print([r.payload for r in dec.receive_repair(1, 0, 3, 15, enc.repair(1, 0, 3, 15))])\n"
    )
    run = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[b'p1']"
    assert run.stderr.count("NativeFallbackWarning") == 1  # found missing, not told so
    for name in _native.COMPILED_MODULES:
        assert name in run.stderr
    run = subprocess.run(
        [
            python,
            "-c",
            "import netsched_edge, netsched_edge.forwarder; print(netsched_edge.__version__)",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0 and run.stdout.strip() == version("netsched"), run.stderr
    cli = subprocess.run(
        [tmp_path / "venv" / "bin" / "netsched", "--version"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 0 and cli.stdout.strip() == f"netsched {version('netsched')}"


APP = """\
import asyncio

from netsched_client import SLO, connect


async def main() -> None:
    async with connect("127.0.0.1", 4433, slo=SLO(deadline_ms=200), verify=False) as s:
        response = await s.request("api", b"hello")
        wrong: int = response.body
        print(response.status, wrong)


asyncio.run(main())
"""


@pytest.mark.timeout(180)
def test_editable_compat_install_is_visible_to_mypy(tmp_path: Path) -> None:
    """README's advice: `pip install -e . --config-settings editable_mode=compat`."""
    tree = _source_copy(tmp_path)
    python = _venv(tmp_path / "venv")
    env = {**os.environ, "NETSCHED_NO_EXTENSIONS": "1"}  # the .pyi stubs stand for them
    subprocess.run(
        [*_pip_install(python), "-e", str(tree), "--config-settings", "editable_mode=compat"],
        env=env,
        capture_output=True,
        check=True,
        timeout=150,
    )
    app = tmp_path / "app"
    app.mkdir()
    (app / "app.py").write_text(APP)
    run = subprocess.run(
        [*MYPY, "--python-executable", str(python), "app.py"],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    # The package is found and typed: the one error is the app's own.
    assert "import-not-found" not in run.stdout, run.stdout
    assert 'app.py:9: error: Incompatible types in assignment (expression has type "bytes"' in (
        run.stdout
    )
    assert "Found 1 error in 1 file" in run.stdout
