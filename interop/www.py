"""Files a server serves and a client must download intact, checked by hash.

As in the interop runner: random names and random contents in a www folder;
the client saves each file under its name in a downloads folder; the check
wants exactly the expected names, each with the expected size and SHA-256.
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

NAME_LENGTH = 12
MAX_NAME_LENGTH = 250  # the runner's zerortt names; a file name may have 255 bytes
MAX_FILE_SIZE = 64 << 20
MAX_FILES = 10_000
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ServedFile:
    name: str
    size: int
    sha256: str


def random_name(rng: random.Random, length: int = NAME_LENGTH) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(length))


def generate(
    www: Path, sizes: Sequence[int], rng: random.Random, name_length: int = NAME_LENGTH
) -> tuple[ServedFile, ...]:
    """Write one file of each size with a fresh random name of `name_length` into `www`."""
    if len(sizes) > MAX_FILES:
        raise ValueError(f"at most {MAX_FILES} files per case, got {len(sizes)}")
    if not 1 <= name_length <= MAX_NAME_LENGTH:
        raise ValueError(f"name_length must be 1..{MAX_NAME_LENGTH}, got {name_length}")
    www.mkdir(parents=True, exist_ok=True)
    names: set[str] = set()
    files: list[ServedFile] = []
    for size in sizes:
        if not 0 <= size <= MAX_FILE_SIZE:
            raise ValueError(f"file size must be 0..{MAX_FILE_SIZE} bytes, got {size}")
        name = random_name(rng, name_length)
        while name in names:
            name = random_name(rng, name_length)
        names.add(name)
        data = rng.randbytes(size)
        (www / name).write_bytes(data)
        files.append(ServedFile(name, size, hashlib.sha256(data).hexdigest()))
    return tuple(files)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_downloads(downloads: Path, expected: Sequence[ServedFile]) -> str | None:
    """None when `downloads` holds exactly the expected files, intact; else what is wrong."""
    present = {p.name: p for p in downloads.iterdir() if p.is_file()} if downloads.is_dir() else {}
    wanted = {f.name: f for f in expected}
    missing = sorted(set(wanted) - set(present))
    unexpected = sorted(set(present) - set(wanted))
    if missing or unexpected:
        return "; ".join(
            part
            for part in (
                _listing("missing", missing, len(wanted)),
                _listing("unexpected", unexpected, len(present)),
            )
            if part
        )
    for name, served in wanted.items():
        size = present[name].stat().st_size
        if size != served.size:
            return f"{name}: {size} bytes downloaded, {served.size} served"
        if sha256_file(present[name]) != served.sha256:
            return f"{name}: contents differ (SHA-256 mismatch)"
    return None


def _listing(what: str, names: list[str], total: int) -> str:
    if not names:
        return ""
    shown = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
    return f"{len(names)} of {total} files {what} ({shown})"
