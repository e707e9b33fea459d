"""Served files and the hash check of downloads; the endpoint contract's environment."""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path

import pytest

from interop.programs import each_url
from interop.programs.contract import ContractError, from_environment, url_target
from interop.www import check_downloads, generate, sha256_file


@pytest.fixture
def served(tmp_path: Path) -> tuple[Path, Path, tuple]:  # type: ignore[type-arg]
    www, downloads = tmp_path / "www", tmp_path / "downloads"
    files = generate(www, (0, 10, 4096), random.Random(7))
    shutil.copytree(www, downloads)
    return www, downloads, files


def test_generated_files_are_random_and_hashed(served: tuple) -> None:  # type: ignore[type-arg]
    www, _, files = served
    assert [f.size for f in files] == [0, 10, 4096]
    assert len({f.name for f in files}) == 3
    for f in files:
        assert sha256_file(www / f.name) == f.sha256
    again = generate(www.parent / "again", (10,), random.Random(8))
    assert again[0].sha256 != files[1].sha256


def test_check_downloads(served: tuple) -> None:  # type: ignore[type-arg]
    _, downloads, files = served
    assert check_downloads(downloads, files) is None
    (downloads / files[2].name).write_bytes(b"\x00" * 4096)
    assert (
        check_downloads(downloads, files) == f"{files[2].name}: contents differ (SHA-256 mismatch)"
    )
    (downloads / files[2].name).write_bytes(b"short")
    assert check_downloads(downloads, files) == f"{files[2].name}: 5 bytes downloaded, 4096 served"
    (downloads / files[2].name).unlink()
    (downloads / "extra").write_bytes(b"")
    problem = check_downloads(downloads, files)
    assert problem == f"1 of 3 files missing ({files[2].name}); 1 of 3 files unexpected (extra)"
    assert check_downloads(downloads / "nowhere", files) is not None


def test_generate_refuses_absurd_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="file size"):
        generate(tmp_path, (-1,), random.Random(1))


def test_contract_from_environment(tmp_path: Path) -> None:
    env = {
        "ROLE": "client",
        "TESTCASE": "handshake",
        "ALPN": "hq-interop",
        "REQUESTS": "https://127.0.0.1:4433/a https://127.0.0.1:4433/b",
        "DOWNLOADS": str(tmp_path),
        "CERTS": "/certs",
    }
    contract = from_environment(env)
    assert contract.requests == ("https://127.0.0.1:4433/a", "https://127.0.0.1:4433/b")
    assert contract.download_path(contract.requests[1]) == tmp_path / "b"
    assert contract.private_key == Path("/certs/priv.key")
    assert url_target("https://127.0.0.1:4433/www/x") == ("127.0.0.1", 4433, "/www/x")
    for key, value, message in (
        ("ROLE", "peer", "ROLE must be one of"),
        ("ALPN", "h2", "ALPN must be one of"),
        ("PORT", "70000", "PORT must be 1..65535"),
        ("REQUESTS", "", "at least one URL"),
    ):
        with pytest.raises(ContractError, match=message):
            from_environment({**env, key: value})
    with pytest.raises(ContractError, match="names no file"):
        contract.download_path("https://127.0.0.1:4433/")


def test_contract_www_file_stays_inside_www(tmp_path: Path) -> None:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "f").write_bytes(b"x")
    (tmp_path / "secret").write_bytes(b"s")
    env = {"ROLE": "server", "TESTCASE": "handshake", "ALPN": "h3", "WWW": str(tmp_path / "www")}
    contract = from_environment(env)
    assert contract.www_file("/f") == tmp_path / "www" / "f"
    assert contract.www_file("/../secret") is None
    assert contract.www_file("/missing") is None


def test_each_url_runs_a_client_per_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REQUESTS", "https://h/a https://h/b https://h/c")
    script = "import sys; print(sys.argv[1]); sys.exit(3 if sys.argv[1].endswith('b') else 0)"
    assert each_url.main([sys.executable, "-c", script]) == 3
    out, err = capfd.readouterr()
    assert out.split() == ["https://h/a", "https://h/b"]  # stops at the first failure
    assert "https://h/b failed with status 3" in err
    assert each_url.main([]) == 1


def test_generate_takes_the_name_length(tmp_path: Path) -> None:
    files = generate(tmp_path, [32, 32], random.Random(1), name_length=250)
    assert [len(f.name) for f in files] == [250, 250]
    assert all((tmp_path / f.name).stat().st_size == 32 for f in files)
    with pytest.raises(ValueError, match="name_length"):
        generate(tmp_path, [1], random.Random(1), name_length=256)


def test_each_url_split_runs_the_first_url_then_the_rest(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REQUESTS", "https://h/a https://h/b https://h/c")
    script = "import sys; print(' '.join(sys.argv[1:]))"
    argv = ["--split", "--second=--zero-rtt", "--", sys.executable, "-c", script]
    assert each_url.main(argv) == 0
    out, _ = capfd.readouterr()
    assert out.splitlines() == ["https://h/a", "--zero-rtt https://h/b https://h/c"]
    for bad in (["--split", sys.executable], ["--split", "--what", "--", "x"], ["--split", "--"]):
        assert each_url.main(bad) == 1
    monkeypatch.setenv("REQUESTS", "https://h/a")
    assert each_url.main(argv) == 1  # two connections need two URLs
    assert "at least 2 URLs" in capfd.readouterr().err
