#!/usr/bin/env bash
# Fetch a micropython-lib package from PyPI and copy one of its top-level
# packages/modules into DEST. Old micropython-* sdists have no setup.py that
# pip can build, so `pip download --no-clean` is used only to unpack them.
# usage: fetch_mpy_lib.sh SPEC NAME DEST     (NAME: package dir or module name)
set -euo pipefail
spec=$1; name=$2; dest=$3
if [ -e "$dest/$name" ] || [ -e "$dest/$name.py" ]; then exit 0; fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/mpylib.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "setup: fetching $spec from PyPI"
TMPDIR="$tmp" build/venv/bin/pip download -q --disable-pip-version-check --no-deps \
    --no-binary :all: --no-clean -d "$tmp/dl" "$spec" >/dev/null 2>&1 || true
src=$(find "$tmp" -path "$tmp/dl" -prune -o \( -name "$name" -o -name "$name.py" \) -print | head -n 1)
if [ -z "$src" ]; then
    echo "setup: could not unpack $spec (no $name inside)" >&2
    exit 1
fi
mkdir -p "$dest"
cp -r "$src" "$dest/"
echo "setup: $spec -> $dest/$(basename "$src")"
