#!/usr/bin/env bash
# One-time set-up, run by every make target through build/.setup-ok:
# a venv with pinned host tools and micropython-lib packages fetched from the
# package registry into build/lib (never committed).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=build/venv
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    python3 -m venv "$VENV"
fi
echo "setup: installing pinned host tools (tools/requirements.txt)"
"$VENV/bin/pip" install -q --disable-pip-version-check -r tools/requirements.txt
# emobpy for its published trip statistics only (make year reads its CSV
# files; its code is never imported): without its dependencies, which
# include pandas < 2
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps emobpy==0.6.2
mkdir -p build/lib
# umqtt.simple 1.3.4 is the newest on PyPI (newer ones are on micropython-lib's
# mip index only); v2g.mqtt uses only the public API that it and the newer
# one frozen in ESP32 images share (see its header). Its connect(), the one
# place that imports `ussl`, is never called.
tools/fetch_mpy_lib.sh micropython-umqtt.simple==1.3.4 umqtt build/lib
# Type stubs of the boards' MicroPython ports, for the HAL type check.
"$VENV/bin/python" -c "from tools.check_boards import ensure_stubs as e; e('esp32'); e('rp2')"
echo "setup: done"
