"""Running the pieces of a site on this machine: the firmware on the unix
port, a real Mosquitto (or the embedded broker), the SunSpec simulator
in-process or as its own process, the CHAdeMO car simulator, and any tool
of this repository that says READY when it is up. One set of runners,
shared by `make sim` (tools/sim), the host tests (host_tests/conftest.py)
and the benchmarks (tools/bench*.py)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tools import children

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
MICROPYTHON = str(ROOT / "build" / "venv" / "bin" / "micropython")
MICROPYPATH = f"{FIRMWARE}:{ROOT / 'build' / 'lib'}:.frozen"


def find_mosquitto():
    """Mosquitto on PATH, else in $V2G_SBIN (default /usr/sbin: Debian puts it
    there, off a non-root PATH); None when neither has it."""
    exe = os.path.join(os.environ.get("V2G_SBIN", "/usr/sbin"), "mosquitto")
    return shutil.which("mosquitto") or (exe if os.access(exe, os.X_OK) else None)


def mp_env(extra=None):
    env = dict(os.environ)
    env["MICROPYPATH"] = MICROPYPATH
    if extra:
        env.update(extra)  # may replace MICROPYPATH
    return env


class LiveInverter:
    """tools.sim.SimInverter served from a background thread of the test
    process, so a test can reach into it (faults, garbage, stop/start)."""

    def __init__(self, port=0, warp=1.0, sim_epoch=None, **kwargs):
        import asyncio
        import threading

        from tools.sim.clock import WarpClock

        self.kwargs = kwargs
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        # the firmware gets the same clock through V2G_CLOCK=self.clock.to_env()
        self.clock = WarpClock(warp, sim_epoch=sim_epoch)
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


class ToolProcess:
    """A tool of this repository (`python -m MODULE ARGS...`) as a child
    process that prints `READY <what>` as its first stdout line once it is
    up; `ready` holds <what>. Its stderr goes to `log` (a path), else
    nowhere. A tool that exits or says anything else first is a
    RuntimeError "NAME: why" (its last log line, or what it printed)."""

    def __init__(self, module, args=(), ready="READY ", log=None, name=None, env=None):
        self.name = name or module
        self.log_path = Path(log) if log else None
        self.log = open(self.log_path, "w") if self.log_path else None
        self.proc = children.spawn([sys.executable, "-m", module, *map(str, args)], stdout=subprocess.PIPE,
                                   stderr=self.log or subprocess.DEVNULL, text=True, cwd=ROOT,
                                   env=dict(os.environ, **(env or {})))
        line = self.proc.stdout.readline()
        if not line.startswith(ready):
            self.stop()
            said = self.log_path.read_text(errors="replace").strip().splitlines()[-1:] if self.log_path else []
            raise RuntimeError(f"{self.name}: " + (said or [line.strip() or "exited at start"])[0])
        self.ready = line[len(ready):].strip()

    def stop(self, sig=None):
        """-> its exit status."""
        rc = children.end(self.proc, sig)
        if self.log:
            self.log.close()
            self.log = None
        return rc


class InverterProcess(ToolProcess):
    """The SunSpec inverter simulator as its own process (tools.sim.inverter_main,
    whose options `args` are), on `port` (0: a free one). With `state_file`
    it writes its snapshot there for state()."""

    def __init__(self, args=(), port=0, state_file=None, log=None):
        self.state_file = state_file
        more = ["--state-file", str(state_file)] if state_file else []
        super().__init__("tools.sim.inverter_main", ["--port", port, *args, *more], ready="READY port=",
                         log=log, name="inverter simulator")
        self.port = int(self.ready)

    def state(self):
        """Its last snapshot, or None before the first one."""
        try:
            return json.loads(Path(self.state_file).read_text())
        except (OSError, ValueError):
            return None


class VehicleProcess(ToolProcess):
    """The CHAdeMO car simulator (tools.sim.vehicle, options `args`) as its own
    process; `link` is the SLCAN link it offers (a vehicle.link value). Its
    SoC byte follows `soc_file` (set_soc); with `record`, report() is what
    it saw."""

    def __init__(self, args=(), soc_file=None, record=None, log=None):
        self.soc_file = Path(soc_file) if soc_file else None
        self.record = Path(record) if record else None
        more = (["--soc-file", str(soc_file)] if soc_file else []) + (["--record", str(record)] if record else [])
        super().__init__("tools.sim.vehicle", [*args, *more], ready="READY ", log=log, name="vehicle simulator")
        self.link = self.ready

    def set_soc(self, soc_pct):
        tmp = self.soc_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"soc_pct": soc_pct}))
        os.replace(tmp, self.soc_file)

    def report(self):
        """The report it recorded (after stop()), or None."""
        try:
            return json.loads(self.record.read_text())["report"]
        except (OSError, ValueError, KeyError, AttributeError):
            return None


class Broker:
    """A real Mosquitto on a loopback port (optionally TLS): a free one, or
    `port`, which must be free."""

    def __init__(self, tmp_path, tls=None, persistence=False, port=0):
        exe = find_mosquitto()
        if exe is None:
            raise RuntimeError("mosquitto is not installed (make test installs it: tools/setup_system.sh)")
        self.exe = exe
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise RuntimeError(f"broker port {port} is taken: {e.strerror}") from None
        self.port = s.getsockname()[1]
        s.close()
        self.dir = tmp_path
        persist = ["persistence true", f"persistence_location {tmp_path}/"] if persistence else ["persistence false"]
        conf = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", *persist, "user root",
                "log_dest stderr", "log_type error", "log_type warning"]
        if tls:
            conf += [f"cafile {tls['ca']}", f"certfile {tls['cert']}", f"keyfile {tls['key']}"]
            if tls.get("require_certificate"):
                conf.append("require_certificate true")
            conf += ["log_type notice"]
        self.conf = tmp_path / f"mosquitto-{self.port}.conf"
        self.conf.write_text("\n".join(conf) + "\n")
        self.proc = None
        self.start()

    def start(self):
        log_path = self.dir / f"mosquitto-{self.port}.log"
        with open(log_path, "ab") as log:
            self.proc = children.spawn([self.exe, "-c", str(self.conf)], stdout=log, stderr=log)
        for _ in range(100):
            if self.proc.poll() is not None:  # e.g. the port was taken meanwhile
                said = "".join(": " + t for t in log_path.read_text(errors="replace").strip().splitlines()[-1:])
                rc, self.proc = self.proc.returncode, None
                raise RuntimeError(f"mosquitto exited at start (status {rc}){said}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("mosquitto did not start")

    def stop(self):
        if self.proc:
            children.end(self.proc)
        self.proc = None


def start_broker(out_dir, which="auto", port=0):
    """Mosquitto when installed (or asked for), else the embedded pure-Python
    broker (tools/sim/mini_broker.py); on `port`, or a free one.
    -> (port, stop function, name)"""
    if which == "mosquitto" or (which == "auto" and find_mosquitto()):
        if not find_mosquitto():
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto), "
                               "or use --broker embedded")
        b = Broker(out_dir, port=port)
        return b.port, b.stop, "mosquitto"
    from tools.sim.mini_broker import run_in_thread

    try:
        _, port, stop = run_in_thread(port)
    except OSError as e:
        raise RuntimeError(f"broker port {port} is taken: {os.strerror(e.errno) if e.errno else e}") from None
    return port, stop, "embedded broker"


def romfs_heap_share(image_bytes):
    """Heap bytes that holding a ROMFS image costs the unix port: the buffer
    in whole 32-byte GC blocks plus its share of the GC's allocation and
    finaliser tables (3 bits per block), plus the bytearray object itself."""
    blocks = (image_bytes + 31) // 32
    return blocks * 32 + (blocks * 3 + 7) // 8 + 64


class Firmware:
    """The firmware (firmware/main.py) on the unix port as its own process;
    its output lines are collected, and its JSON event lines parsed as they
    come."""

    def __init__(self, config_path, env=None, heap=None, compiled=False, romfs=False, log=None, build_dir=None):
        """compiled: run the .mpy build (tools/build_mpy.py), as a board
        runs it; needed for small heaps (compiling source costs RAM).
        romfs: run that build from a ROMFS image (tools/romfs_boot.py), as a
        board with a ROMFS partition runs it; `heap` (KB) is then the heap
        beyond the image's buffer, which a board keeps in flash.
        log: a file that gets every output line too.
        build_dir: where that build goes (default build/mpy/x64, the ROMFS
        image build/romfs/x64.img); a test gives its own tmp_path."""
        import threading

        self.lines = []
        self._events = []  # the JSON objects among the lines, in order
        self._last = {}  # the newest event of each kind
        self.cond = threading.Condition()
        self.log = open(log, "w") if log else None
        env = dict(env or {})
        main = [str(FIRMWARE / "main.py")]
        if romfs:
            from tools.build_mpy import romfs as build_romfs

            image = Path(build_dir) / "x64.img" if build_dir else ROOT / "build" / "romfs" / "x64.img"
            image.parent.mkdir(parents=True, exist_ok=True)
            size = build_romfs("x64", image)
            env["MICROPYPATH"] = ".frozen"
            main = [str(ROOT / "tools" / "romfs_boot.py"), str(image)]
            if heap:
                heap = f"{int(str(heap).rstrip('k')) * 1024 + romfs_heap_share(size)}"
        elif compiled:
            from tools.build_mpy import build

            out = Path(build_dir) if build_dir else ROOT / "build" / "mpy" / "x64"
            build("x64", out)
            env["MICROPYPATH"] = f"{out}:{out / 'lib'}:.frozen"
            main = [str(out / "main.py")]
        heap_args = ["-X", f"heapsize={heap}"] if heap else []
        self.proc = children.spawn(
            [MICROPYTHON, *heap_args, *main, str(config_path), "--boards", str(ROOT / "board_configs")],
            stop_sig=signal.SIGINT,  # the firmware stops cleanly on SIGINT
            preexec_fn=children.block_stop_signals,  # read as pending (v2g/hal/stopsig.py)
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=mp_env(env), cwd=ROOT)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            if self.log:
                self.log.write(line)
            try:
                e = json.loads(line)
            except ValueError:
                e = None
            with self.cond:
                self.lines.append(line)
                if isinstance(e, dict):
                    self._events.append(e)
                    self._last[e.get("ev")] = e
                self.cond.notify_all()

    def events(self, kind=None):
        """The events so far (of one kind)."""
        with self.cond:
            evs = list(self._events)
        return evs if kind is None else [e for e in evs if e.get("ev") == kind]

    def last(self, kind):
        """The newest event of a kind, or None."""
        with self.cond:
            return self._last.get(kind)

    def wait_event(self, kind, pred=lambda e: True, timeout=15.0):
        import time

        end = time.time() + timeout
        with self.cond:
            while True:
                for e in self.events(kind):
                    if pred(e):
                        return e
                left = end - time.time()
                if left <= 0 or self.proc.poll() is not None:
                    return None
                self.cond.wait(min(left, 0.5))

    def stop(self, sig=None):
        children.end(self.proc, sig, timeout=15)
        self.reader.join(5)
        if self.log:
            self.log.close()
            self.log = None
        return self.proc.returncode

    def output(self):
        with self.cond:
            return "".join(self.lines)


def site_config(tmp_path, inverter_port, broker_port, **overrides):
    """examples/site.json pointed at the test's inverter and broker, with
    a scratch store; overrides use "section__key" names."""
    cfg = json.loads((ROOT / "examples" / "site.json").read_text())
    cfg["inverter"]["link"] = f"tcp:127.0.0.1:{inverter_port}"
    cfg["mqtt"]["host"] = "127.0.0.1"
    cfg["mqtt"]["port"] = broker_port
    cfg["store"] = {"dir": str(tmp_path / "store")}
    for path, value in overrides.items():
        d = cfg
        keys = path.split("__")
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = value
    p = tmp_path / "site.json"
    p.write_text(json.dumps(cfg))
    return p, cfg
