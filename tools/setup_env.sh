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
mkdir -p build/lib
tools/fetch_mpy_lib.sh micropython-umqtt.simple==1.3.4 umqtt build/lib
# umqtt.simple 1.3.4 imports `ussl` for TLS; the unix port only has `ssl`.
printf 'from ssl import *  # umqtt.simple 1.3.4 imports ussl\n' > build/lib/ussl.py
# Type stubs of the boards' MicroPython ports, for the HAL type check.
"$VENV/bin/python" -c "from tools.check_boards import ensure_stubs as e; e('esp32'); e('rp2')"
echo "setup: done"
