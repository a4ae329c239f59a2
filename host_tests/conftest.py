"""Shared fixtures: run firmware code on the MicroPython unix port.

A test's MicroPython half is a program in host_tests/mp/ (run_mp, start_mp),
run with the firmware on its path; the test asserts on what it printed in
plain Python. Most of them hold one function per test and are run as

    MICROPYPATH=firmware:build/lib:.frozen build/venv/bin/micropython host_tests/mp/<test>_cases.py CASE [ARG...]

from the repository root (host_tests/mp/cases.py).
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# copies of ../shared/reference, so a clone tests on its own (fixtures/README.md)
REFERENCE = ROOT / "fixtures"
sys.path.insert(0, str(ROOT))

from tools import children  # noqa: E402
from tools.harness import (  # noqa: E402,F401 - shared with the benchmarks
    FIRMWARE, MICROPYPATH, MICROPYTHON, Broker, Firmware, LiveInverter, mp_env, site_config)

# Nothing a test starts outlives the run: every process started from here
# carries this run's tag in its environment, and whatever still runs when
# the session ends (a test failed or was interrupted before its cleanup,
# an orphaned grandchild) is ended then. SIGTERM stops the run as Ctrl-C
# does, so fixture teardowns and this sweep run for it too.
RUN_TAG = f"{os.getpid()}.{os.urandom(4).hex()}"
os.environ["V2G_TEST_RUN"] = RUN_TAG
signal.signal(signal.SIGTERM, signal.default_int_handler)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    left = children.end_tagged("V2G_TEST_RUN", RUN_TAG)
    if left:
        print(f"\nconftest: ended {len(left)} process(es) the tests left running:", file=sys.stderr)
        for pid, cmd in sorted(left.items()):
            print(f"  {pid} {cmd[:200]}", file=sys.stderr)


class MpResult:
    def __init__(self, proc):
        self.rc = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    def lines(self):
        return self.out.splitlines()

    def json(self):
        """The last stdout line, parsed as JSON (the case's result)."""
        return json.loads(self.lines()[-1])


MP = ROOT / "host_tests" / "mp"


def _mp_cmd(program, args, heap=None):
    cmd = [MICROPYTHON]
    if heap:
        cmd += ["-X", f"heapsize={heap}"]
    return cmd + program + [str(a) for a in args]


def _run(cmd, timeout, check, env, cwd, stdin):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=stdin,
                          env=mp_env(env), cwd=cwd or ROOT)
    res = MpResult(proc)
    if check and res.rc != 0:
        raise AssertionError(f"micropython exited {res.rc}\nstdout:\n{res.out}\nstderr:\n{res.err}")
    return res


def run_mp(name, *args, heap=None, timeout=60, check=True, env=None, cwd=None, stdin=None):
    """The program host_tests/mp/<name>.py on the unix port, with args (each
    str()'d) on its command line and `stdin` as its input -> MpResult."""
    return _run(_mp_cmd([str(MP / f"{name}.py")], args, heap), timeout, check, env, cwd, stdin)


def start_mp(name, *args, env=None, cwd=None):
    """host_tests/mp/<name>.py on the unix port as a running process (text
    stdout and stderr piped), for a test that talks to it while it runs."""
    return subprocess.Popen(_mp_cmd([str(MP / f"{name}.py")], args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=mp_env(env), cwd=cwd or ROOT)


def _made(build, close):
    """A fixture body: yields a factory; closes everything it made."""
    made = []

    def make(*args, **kwargs):
        thing = build(*args, **kwargs)
        made.append(thing)
        return thing

    yield make
    for thing in made:
        close(thing)


@pytest.fixture
def live_inverter():
    yield from _made(LiveInverter, LiveInverter.close)


@pytest.fixture
def broker(tmp_path):
    yield from _made(lambda tls=None, persistence=False: Broker(tmp_path, tls, persistence), Broker.stop)


@pytest.fixture
def firmware():
    yield from _made(Firmware, Firmware.stop)
