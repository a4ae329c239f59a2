"""`make sim`: one simulated day of the real firmware against the simulated site.

Starts the SunSpec inverter simulator (pymodbus, RTU over TCP) and the
firmware on the MicroPython unix port, both on one warped clock, samples the
simulator's physical truth while the day runs, then writes the day report
(build/sim/report.json) and plot (build/sim/day.png).
"""

import argparse
import calendar
import copy
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tools import children
from tools.harness import Firmware, InverterProcess, VehicleProcess, start_broker

from .clock import WarpClock
from .cloud_side import DEFAULT_DISPATCHES, CloudSide
from .grid import Grid
from .inverter import DC_MODELS
from . import report as reportmod

ROOT = Path(__file__).resolve().parents[2]
DAY_S = 86400


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="make sim", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=None,
                   help="site config to simulate (default examples/site.json, or site_chademo.json with --vehicle)")
    p.add_argument("--vehicle", action="store_true",
                   help="a CHAdeMO car in the loop: tools.sim.vehicle replays the Nissan Leaf capture over SLCAN")
    p.add_argument("--date", default="2026-06-15", help="local date the simulated day starts (00:00)")
    p.add_argument("--hours", type=float, default=24.0)
    p.add_argument("--wall-s", type=float, default=90.0, help="wall seconds the day should take")
    p.add_argument("--soc", type=float, default=45.0, help="EV SoC at the start, %%")
    p.add_argument("--out", default=str(ROOT / "build" / "sim"))
    p.add_argument("--freq-events", default="default",
                   help='"default", "none", or JSON [{"at": "HH:MM", "dur_s": s, "hz": v}, ...]')
    p.add_argument("--quiet", action="store_true", help="no hourly progress lines")
    p.add_argument("--no-dispatch", action="store_true", help="the cloud side sends no dispatch")
    p.add_argument("--mobility", choices=("day", "none"), default="day",
                   help="day: the owner commutes (tools/year/mobility.py: leaves at the departure, home "
                        "before the evening dispatches); none: the car stays plugged in. With --vehicle: none")
    p.add_argument("--trip-seed", type=int, default=1, help="seed of the day's trip draw")
    p.add_argument("--broker", choices=("auto", "mosquitto", "embedded"), default="auto",
                   help="auto: Mosquitto when installed, else the embedded pure-Python broker")
    p.add_argument("--broker-port", type=int, default=0, help="the broker's port (default: a free one)")
    p.add_argument("--inverter-port", type=int, default=0,
                   help="the inverter's Modbus TCP port (default: a free one)")
    return p.parse_args(argv)


class StartError(Exception):
    """A piece of the simulated site did not start (said in one line)."""


class RunDir:
    """Where the files the day rewrites hundreds of times a wall second live
    while it runs: the inverter's state snapshot (every 5 ms) and the
    firmware's store (an outbox append per telemetry record, ~100 a second
    at x960). On a disk one such rename or append was measured blocking for
    0.1-0.2 s behind a journal commit (write-back after the set-up's install,
    another job's I/O): at x960 that is the whole reversion window, and on
    the unix port a garbage collection in the firmware's control thread waits
    for the cloud thread stuck in its write (every thread is signalled to
    scan its own stack), so the setpoint refresh stalls with it. In memory
    (/dev/shm, when there is one) nothing waits for the disk; close() leaves
    the last snapshot and the store in `out` as before."""

    def __init__(self, out):
        self.out = out
        # a fresh device every run: no command seq, settings or outbox from the last
        (out / "inverter_state.json").unlink(missing_ok=True)
        shutil.rmtree(out / "data", ignore_errors=True)
        shm = Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else out
        for old in base.glob("v2g-sim-*-*"):  # left by a sim that was killed (-9)
            pid = old.name.split("-")[2]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        self.path = Path(tempfile.mkdtemp(prefix=f"v2g-sim-{os.getpid()}-", dir=base))
        self.state = self.path / "inverter_state.json"
        self.data = self.path / "data"

    def close(self):
        try:
            if self.state.exists():
                shutil.copyfile(self.state, self.out / "inverter_state.json")
            if self.data.exists():
                shutil.copytree(self.data, self.out / "data")
        finally:
            shutil.rmtree(self.path, ignore_errors=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's
    return True


def local_start_unix(date, utc_offset_min):
    y, m, d = (int(x) for x in date.split("-"))
    return calendar.timegm((y, m, d, 0, 0, 0)) - utc_offset_min * 60


def freq_events(spec, start_s, nominal_hz):
    if spec == "none":
        return []
    if spec == "default":
        # an over-frequency event late in the evening (wind at low load) and
        # an under-frequency one at the evening peak, as a grid operator
        # would see them, both while the commuter's car is home (at midday
        # it is away: nothing to respond with)
        spec = [{"at": "22:05", "dur_s": 300, "hz": nominal_hz + 0.35},
                {"at": "19:30", "dur_s": 300, "hz": nominal_hz - 0.35}]
    else:
        spec = json.loads(spec)
    out = []
    for e in spec:
        hh, mm = e["at"].split(":")
        out.append({"start": start_s + int(hh) * 3600 + int(mm) * 60, "dur_s": e["dur_s"], "hz": e["hz"]})
    return out


def _hhmm(s):
    return "%02d:%02d" % (s // 3600, s % 3600 // 60)


def day_trips(site, args):
    """The owner's day from the mobility model make year uses."""
    from tools.year.mobility import sim_day_trips

    y, m, d = (int(x) for x in args.date.split("-"))
    return sim_day_trips(site, datetime.date(y, m, d), seed=args.trip_seed)


def run(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_dir = RunDir(out)
    try:
        return _day(args, out, run_dir)
    finally:
        children.end_all()  # the inverter writes its last snapshot as it stops
        run_dir.close()


def _day(args, out, run_dir):
    if args.config is None:
        args.config = str(ROOT / "examples" / ("site_chademo.json" if args.vehicle else "site.json"))
    site = json.loads(Path(args.config).read_text())
    offset = site.get("utc_offset_min", 0)
    start_s = local_start_unix(args.date, offset)
    span_s = int(args.hours * 3600)
    warp = span_s / args.wall_s
    nominal = site.get("grid", {}).get("nominal_hz", 50)
    events = freq_events(args.freq_events, start_s, nominal)
    trips = day_trips(site, args) if args.mobility == "day" and not args.vehicle else []
    # The clock starts a moment in the future so both processes are up at 00:00.
    lead_real_s = 1.5
    clock = WarpClock(warp, real_epoch=time.time() + lead_real_s, sim_epoch=start_s)
    try:
        inverter = InverterProcess(["--unit", 1, "--clock", clock.to_env(), "--soc", args.soc,
                                    "--capacity-wh", site["battery"]["capacity_wh"], "--nominal-hz", nominal,
                                    "--freq-events", json.dumps(events), "--state-period-s", 0.005,
                                    "--away", json.dumps([[t["leave_s"], t["back_s"], t["wh"]] for t in trips]),
                                    # with a car: the DC stage's 714 measurements for its 0x109
                                    *(["--models", ",".join(map(str, DC_MODELS))] if args.vehicle else [])],
                                   port=args.inverter_port, state_file=run_dir.state, log=out / "inverter.log")
        broker_port, stop_broker, broker_name = start_broker(out, args.broker, args.broker_port)
        # x20: the capture's 28 s plug-in sequence would be 11 simulated
        # hours at x1440; the CAN timing itself stays real time. The car
        # holds its steady charging phase; its SoC byte follows the
        # simulated battery (set_soc below).
        vehicle = VehicleProcess(["--tcp", 0, "--hold", "--speed", 20], soc_file=out / "vehicle_soc.json",
                                 record=out / "vehicle_frames.json", log=out / "vehicle.log") if args.vehicle else None
    except (RuntimeError, OSError) as e:
        raise StartError(e) from None
    if vehicle:
        vehicle.set_soc(args.soc)
    cfg = copy.deepcopy(site)
    cfg["inverter"]["link"] = f"tcp:127.0.0.1:{inverter.port}"
    if vehicle:
        cfg.setdefault("vehicle", {}).update(driver="chademo", link=vehicle.link)
    cfg["mqtt"].update(host="127.0.0.1", port=broker_port, tls=False)
    cfg.setdefault("store", {})["dir"] = str(run_dir.data)
    # The inverter's reversion timer runs in simulated time; at x1000 a 10 s
    # timer is 10 ms of wall time, less than a scheduling hiccup. Stretch it
    # to at least 0.5 s of wall time so only a real silence trips it (0.2 s
    # tripped about one day in ten on a loaded 2-core CI machine, with the
    # host, not the firmware, holding the process; the report's
    # max_setpoint_gap_real_ms shows the worst gap of each run).
    revert_s = cfg["inverter"].get("revert_s", 10)
    cfg["inverter"]["revert_s"] = max(revert_s, int(0.5 * warp) + 1)
    cfg_path = out / "site.json"
    cfg_path.write_text(json.dumps(cfg, indent=2))
    grid = Grid(site["tariff"]["periods"], nominal_hz=nominal, utc_offset_min=offset,
                seasons=site["tariff"].get("seasons"))
    print(f"sim: {args.hours:g} h of {site['device_id']} from {args.date} 00:00 local, "
          f"warp x{warp:.0f} (~{args.wall_s:.0f} s), inverter on port {inverter.port}, "
          f"{broker_name} on port {broker_port}", flush=True)
    for t in trips:
        print(f"sim: the owner drives {t['km']:.0f} km ({t['wh'] / 1000:.1f} kWh), away "
              f"{_hhmm(t['leave_s'] - start_s)}-{_hhmm(t['back_s'] - start_s)}", flush=True)
    cloud = CloudSide(clock, "127.0.0.1", broker_port, site["device_id"], site["command_key"], start_s,
                      DEFAULT_DISPATCHES if not args.no_dispatch else [])
    firmware = Firmware(cfg_path, {"V2G_CLOCK": clock.to_env()}, log=out / "firmware.log")
    samples = []
    t_wall0 = time.time()
    next_hour = start_s
    end_s = start_s + span_s
    try:
        while True:
            now = clock.now()
            if now >= end_s:
                break
            if firmware.proc.poll() is not None:
                print("sim: the firmware exited early", file=sys.stderr)
                break
            st = inverter.state()
            if st and st.get("sim_s") and now >= start_s and (not samples or st["sim_s"] > samples[-1]["sim_s"]):
                mode = firmware.last("mode") or {}
                st["mode"] = mode.get("mode")
                st["reason"] = mode.get("reason")
                samples.append(st)
                if vehicle:
                    vehicle.set_soc(st["soc_pct"])
                if st["sim_s"] >= next_hour and not args.quiet:
                    imp, _ = grid.price(st["sim_s"])
                    hh = int((st["sim_s"] - start_s) // 3600)
                    print(f"  {hh:02d}:00  SoC {st['soc_pct']:5.1f} %  ev_w {st['ev_w']:+7.0f} W  "
                          f"{(st['mode'] or '-'):9s} {st['reason'] or '':18s} import {imp:.2f}", flush=True)
                    next_hour += 3600
            time.sleep(0.004)
    finally:
        # the reversions so far: the firmware's stop takes longer than the
        # stretched reversion window, after which the inverter reverts to
        # 0 W by design (the controller is gone)
        at_stop = inverter.state() or {}
        t_stop = time.monotonic()
        rc = firmware.stop()
        stop_s = time.monotonic() - t_stop
        if rc == -9:
            # killed after the harness's wait: what it was doing when it hung
            # is the one clue a CI log can keep
            tail = firmware.output()[-2500:]
            threads = getattr(firmware.proc, "hung_threads", "")
            print(f"sim: the firmware did not stop within {stop_s:.1f} s of SIGINT; its threads "
                  f"(tid state wchan syscall):\n{threads}\nits last output:\n{tail}", file=sys.stderr)
        inverter.stop()
        cloud.stop()
        seen = cloud.summary()
        stop_broker()
        if vehicle:
            vehicle.stop()
        vehicle_report = vehicle.report() if vehicle else None
    final = inverter.state()
    if final and (not samples or final["sim_s"] > samples[-1]["sim_s"]):
        samples.append(dict(final, mode=None, reason=None))
    wall_s = time.time() - t_wall0
    rep = reportmod.build(site, samples, firmware.events(), grid, start_s, end_s, events,
                          warp=warp, wall_s=wall_s, firmware_rc=rc, cloud=seen,
                          reversions_running=at_stop.get("reversions"))
    rep["trips"] = trips
    rep["firmware_stop_s"] = round(stop_s, 2)  # SIGINT to exit, wall time
    if vehicle_report is not None:
        rep["vehicle"] = {k: vehicle_report.get(k) for k in ("sent", "received", "counts", "undecodable")
                          if k in vehicle_report}
        rep["vehicle"]["states"] = sorted({e.get("vehicle") for e in firmware.events() if e.get("vehicle")})
    (out / "report.json").write_text(json.dumps(rep, indent=2))
    (out / "samples.json").write_text(json.dumps(samples))
    reportmod.plot(site, samples, grid, start_s, out / "day.png", seen["dispatches"])
    print(CloudSide.text(seen))
    print(reportmod.text(rep))
    print(f"wrote {out / 'report.json'} and {out / 'day.png'}")
    return 0 if rep["ok"] else 1


def main(argv=None):
    """Every child is ended on every way out (tools/children.py); a failed
    start or an interrupt is one line on stderr."""
    args = parse_args(argv)
    children.exit_on_signals()
    try:
        return run(args)
    except StartError as e:
        print(f"sim: cannot start: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sim: interrupted", file=sys.stderr)
        return 130
    finally:
        children.end_all()


if __name__ == "__main__":
    sys.exit(main())
