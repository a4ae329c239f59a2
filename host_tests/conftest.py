"""Shared fixtures: run firmware code on the MicroPython unix port.

The `mpy` fixture runs a MicroPython snippet with the firmware on its path and
returns what it printed; a test then asserts on that output in plain Python.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
MICROPYTHON = str(ROOT / "build" / "venv" / "bin" / "micropython")
MICROPYPATH = f"{FIRMWARE}:{ROOT / 'build' / 'lib'}:.frozen"
REFERENCE = ROOT.parent / "shared" / "reference"
sys.path.insert(0, str(ROOT))


def mp_env(extra=None):
    env = dict(os.environ)
    env["MICROPYPATH"] = MICROPYPATH
    if extra:
        env.update(extra)
    return env


class MpResult:
    def __init__(self, proc):
        self.rc = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    def lines(self):
        return self.out.splitlines()

    def json(self):
        """The last stdout line, parsed as JSON (the snippet's result)."""
        return json.loads(self.lines()[-1])


def run_mpy(code, *, heap=None, timeout=60, check=True, env=None, cwd=None, args=()):
    cmd = [MICROPYTHON]
    if heap:
        cmd += ["-X", f"heapsize={heap}"]
    cmd += ["-c", code, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=mp_env(env), cwd=cwd or ROOT)
    res = MpResult(proc)
    if check and res.rc != 0:
        raise AssertionError(f"micropython exited {res.rc}\nstdout:\n{res.out}\nstderr:\n{res.err}")
    return res


@pytest.fixture
def mpy():
    """Run a MicroPython snippet on the unix port: mpy(code) -> MpResult."""
    return run_mpy


class LiveInverter:
    """tools.sim.SimInverter served from a background thread of the test
    process, so a test can reach into it (faults, garbage, stop/start)."""

    def __init__(self, port=0, **kwargs):
        import asyncio
        import threading

        from tools.sim.clock import WarpClock
        from tools.sim.inverter import SimInverter

        self.kwargs = kwargs
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.clock = WarpClock(1.0)
        self.inv = None
        self.port = self.start(port)

    def call(self, coro_or_fn, *args):
        import asyncio

        if asyncio.iscoroutinefunction(coro_or_fn):
            return asyncio.run_coroutine_threadsafe(coro_or_fn(*args), self.loop).result(10)
        fut = asyncio.run_coroutine_threadsafe(self._sync(coro_or_fn, *args), self.loop)
        return fut.result(10)

    @staticmethod
    async def _sync(fn, *args):
        return fn(*args)

    def start(self, port=0):
        from tools.sim.inverter import SimInverter

        self.inv = SimInverter(self.clock, **self.kwargs)
        return self.call(self.inv.start, "127.0.0.1", port)

    def stop(self):
        if self.inv is not None:
            self.call(self.inv.stop)
            self.inv = None

    def close(self):
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def live_inverter():
    made = []

    def make(**kwargs):
        li = LiveInverter(**kwargs)
        made.append(li)
        return li

    yield make
    for li in made:
        li.close()
