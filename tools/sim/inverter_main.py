"""Run the simulated inverter as its own process.

    build/venv/bin/python -m tools.sim.inverter_main --port 1502 --unit 1 \
        --base 40000 --soc 50 --capacity-wh 60000 --clock "$V2G_CLOCK" \
        [--omit 713.SoH ...] [--w-sf 1] [--state-file build/sim/inverter.json]

Prints "READY port=P" on stdout once it listens (--port 0 picks a free port),
then serves until SIGTERM or SIGINT and exits 0. SIGUSR1 trips a fault
(701 Alrm OVER_TEMP), SIGUSR2 clears it. With --state-file it rewrites a JSON
snapshot (atomically: temporary file, then rename) every --state-period-s of
wall time and once more on exit, for observers such as the day report; the
file is written from a thread of its own, never from the event loop that
serves Modbus (see StateWriter).
"""

import argparse
import asyncio
import gc
import json
import os
import signal
import socket
import sys
import threading

from .clock import WarpClock
from .grid import Grid
from .inverter import DEFAULT_MODELS, SimInverter


def _omit(text):
    model, _, point = text.partition(".")
    if not point:
        raise argparse.ArgumentTypeError("expected MODEL.POINT, e.g. 713.SoH")
    return int(model), point


def _models(text):
    return tuple(int(m) for m in text.split(","))


def _json_arg(text):
    """Inline JSON, or @FILE to read it from a file."""
    if text.startswith("@"):
        with open(text[1:]) as f:
            return json.load(f)
    return json.loads(text)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.sim.inverter_main",
                                description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True, help="TCP port, 0 for any free one")
    p.add_argument("--unit", type=int, default=1, help="Modbus unit id (1..247)")
    p.add_argument("--base", type=int, default=40000, help="SunSpec base address (40000, 0 or 50000)")
    p.add_argument("--models", type=_models, default=DEFAULT_MODELS,
                   help="comma list, e.g. 1,701,702,704,713 (add 714 for DC voltage and current)")
    p.add_argument("--omit", type=_omit, action="append", default=[], metavar="MODEL.POINT",
                   help="a point that reads 'not implemented' (repeatable)")
    p.add_argument("--clock", default=os.environ.get("V2G_CLOCK"),
                   help="warp,real_epoch_ms,sim_epoch_ms (default $V2G_CLOCK, else real time)")
    p.add_argument("--soc", type=float, default=50.0, help="initial SoC, %%")
    p.add_argument("--soh", type=float, default=100.0, help="state of health, %%")
    p.add_argument("--capacity-wh", type=float, default=60000.0)
    p.add_argument("--max-charge-w", type=float, default=11000.0)
    p.add_argument("--max-discharge-w", type=float, default=11000.0)
    p.add_argument("--ramp-w-per-s", type=float, default=20000.0)
    p.add_argument("--w-sf", type=int, default=0)
    p.add_argument("--hz-sf", type=int, default=-3)
    p.add_argument("--totwh-sf", type=int, default=0)
    p.add_argument("--wset-sf", type=int, default=0)
    p.add_argument("--pct-sf", type=int, default=-1)
    p.add_argument("--wh-in", type=float, default=0.0, help="lifetime TotWhAbs to start from")
    p.add_argument("--wh-out", type=float, default=0.0, help="lifetime TotWhInj to start from")
    p.add_argument("--nominal-hz", type=float, default=50.0)
    p.add_argument("--freq-events", type=_json_arg, default=[],
                   help='JSON list of {"start": unix_s, "dur_s": s, "hz": value}, or @FILE')
    p.add_argument("--seed", type=int, default=0, help="seed of the grid frequency wander")
    p.add_argument("--away", type=_json_arg, default=[], metavar="JSON",
                   help="the owner's trips: [[leave_s, back_s, trip_wh], ...] in simulated unix s")
    p.add_argument("--state-file", help="write a JSON snapshot here periodically")
    p.add_argument("--state-period-s", type=float, default=0.1, help="wall seconds between snapshots")
    p.add_argument("--step-s", type=float, default=0.002, help="wall seconds between physics steps")
    return p.parse_args(argv)


def write_state(path, snapshot):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(snapshot, f)
    os.replace(tmp, path)


class StateWriter:
    """Writes the newest snapshot handed to put() from its own thread.

    A file write can block: a rename behind an ext4 journal commit (write-
    back after a big install, another job's I/O) was measured taking 0.2 s.
    On the event loop that is 0.2 s in which the inverter answers no Modbus
    request, at x960 three simulated minutes: the firmware's whole reversion
    window (0.2 s of wall time in `make sim`). Here only this thread waits;
    the loop goes on serving. A snapshot not yet written when a newer one
    comes is skipped (observers want the latest)."""

    def __init__(self, path):
        self.path = path
        self.error = None  # what stopped the thread, raised again by put()
        self._cond = threading.Condition()
        self._pending = None
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="state-writer", daemon=True)
        self._thread.start()

    def put(self, snapshot):
        if self.error is not None:
            raise self.error
        with self._cond:
            self._pending = snapshot
            self._cond.notify()

    def close(self, final_snapshot, timeout_s=5.0):
        """Write final_snapshot last, wait for it (at most timeout_s)."""
        with self._cond:
            self._pending = final_snapshot
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout_s)

    def _run(self):
        while True:
            with self._cond:
                while self._pending is None and not self._closing:
                    self._cond.wait()
                snapshot, self._pending = self._pending, None
            if snapshot is None:
                return  # closing, and the final one is written
            try:
                write_state(self.path, snapshot)
            except Exception as e:  # noqa: BLE001 - handed to the loop by put()
                self.error = e
                return


def _bind_error(host, port):
    """Why (host, port) cannot be listened on, or None."""
    s = socket.socket()
    try:
        s.bind((host, port))
    except OSError as e:
        return e.strerror or str(e)
    finally:
        s.close()
    return None


async def run(args):
    clock = WarpClock.from_env(args.clock) if args.clock else WarpClock()
    grid = Grid(nominal_hz=args.nominal_hz, events=args.freq_events, seed=args.seed)
    inverter = SimInverter(
        clock, unit=args.unit, base_addr=args.base, models=args.models, omit_points=args.omit,
        capacity_wh=args.capacity_wh, soc_pct=args.soc, soh_pct=args.soh,
        max_charge_w=args.max_charge_w, max_discharge_w=args.max_discharge_w,
        ramp_w_per_s=args.ramp_w_per_s, grid=grid, w_sf=args.w_sf, hz_sf=args.hz_sf,
        totwh_sf=args.totwh_sf, wset_sf=args.wset_sf, pct_sf=args.pct_sf,
        wh_abs=args.wh_in, wh_inj=args.wh_out, step_s=args.step_s)
    inverter.away = [tuple(t) for t in args.away]

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, inverter.inject_fault, "OVER_TEMP")
    loop.add_signal_handler(signal.SIGUSR2, inverter.clear_fault)

    try:
        port = await inverter.start(args.host, args.port)
    except (OSError, RuntimeError):  # pymodbus says only "Could not start listen"
        reason = _bind_error(args.host, args.port)
        if reason is None:
            raise
        print(f"cannot listen on {args.host}:{args.port}: {reason}", file=sys.stderr, flush=True)
        return 1
    # Everything made so far (pymodbus, the register map: ~20000 objects) stays
    # for the whole run; out of the collector's way, a full collection no
    # longer walks them (one took 25 ms of the event loop under load).
    gc.collect()
    gc.freeze()
    print("READY port=%d" % port, flush=True)
    stop_wait = asyncio.create_task(stop.wait())
    writer = StateWriter(args.state_file) if args.state_file else None
    try:
        while not stop.is_set():
            if writer:
                writer.put(inverter.snapshot())
            done, _ = await asyncio.wait({stop_wait, inverter.physics_task},
                                         timeout=args.state_period_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if inverter.physics_task in done:
                return 1  # the physics died; its traceback is on stderr
    finally:
        stop_wait.cancel()
        await inverter.stop()
        if writer:
            writer.close(inverter.snapshot())
    return 0


def main(argv=None):
    args = parse_args(argv)
    if not 1 <= args.unit <= 247:
        print("--unit must be within 1..247", file=sys.stderr)
        return 2
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
