# Front door: `make sim`, `make test`. Every target sets itself up on first use.
SHELL := /bin/bash
VENV := build/venv
PY := $(VENV)/bin/python
MPY := $(VENV)/bin/micropython
SETUP := build/.setup-ok
# The unix port's whole module search path; keep .frozen (asyncio, ssl).
export MICROPYPATH := firmware:build/lib:.frozen

.PHONY: setup sim year test run deploy bench check-boards clean

$(SETUP): tools/requirements.txt tools/setup_env.sh tools/fetch_mpy_lib.sh
	tools/setup_env.sh
	touch $@

setup: $(SETUP)

sim: $(SETUP)
	$(PY) -m tools.sim $(SIMARGS)

# A simulated year of one charger and its owner (CONTRACT section 9): exits
# 1 when a check fails. YEARARGS: --config FILE, --days N, --seed N.
year: $(SETUP)
	$(PY) -m tools.year $(YEARARGS)

test: $(SETUP)
	tools/setup_system.sh
	$(PY) -m pytest host_tests $(PYTEST_ARGS)

# The firmware on the unix port until SIGINT/SIGTERM. GNU make itself exits
# only 0 or 2 (POSIX; no recipe can change that): a config error is 2 either
# way, any other failure is 2 as well, with make's "Error N" line naming the
# firmware's own code N. The launcher alone passes N through as its status:
# build/venv/bin/python tools/run_unix.py FILE.
run: $(SETUP)
	@test -n "$(CONFIG)" || { echo "usage: make run CONFIG=site.json" >&2; exit 2; }
	$(PY) tools/run_unix.py "$(CONFIG)"

bench: $(SETUP)
	$(PY) -m tools.bench

# For installers: validate, cross-compile for the board, copy with mpremote,
# verify every file by hash, reset. See README "For installers".
deploy: $(SETUP)
	@test -n "$(BOARD)" -a -n "$(PORT)" -a -n "$(CONFIG)" || { echo "usage: make deploy BOARD=name PORT=/dev/ttyUSB0 CONFIG=site.json" >&2; exit 2; }
	$(PY) -m tools.deploy --board "$(BOARD)" --port "$(PORT)" --config "$(CONFIG)" $(if $(ROMFS),--romfs) $(DEPLOYARGS)

# Board configs against their chips, and the HAL type-checked against the
# ports' stubs (also part of make test).
check-boards: $(SETUP)
	$(PY) -m tools.check_boards --types

clean:
	rm -rf build
