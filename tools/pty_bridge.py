"""The MicroPython unix port presented as a board on a serial line.

    build/venv/bin/python -m tools.pty_bridge --root DIR [--link-file FILE] [--no-main]

Creates a pseudo-terminal (the "serial port": its path is printed as
`READY port=/dev/pts/N` and written to --link-file) and runs the unix port's
interactive REPL behind it, in DIR (the board's filesystem: what mpremote
copies lands there). mpremote, a terminal program or `make deploy` talk to it
as they would to an ESP32 or a Pico W: friendly REPL, Ctrl-C, raw REPL,
raw-paste, soft reset, `machine.reset()`.

What makes it behave like a board rather than a process:
- The serial line outlives the interpreter. The unix port ends its process on
  a soft reset (Ctrl-D, `machine.soft_reset()`, `sys.exit()`); the bridge
  prints "MPY: soft reboot" and starts a new one, running boot.py and then
  main.py from DIR as a board does. After a soft reset from the raw REPL the
  new interpreter goes back to the raw REPL and skips main.py (as boards do),
  which is what mpremote waits for.
- Module search path: DIR, then .frozen, then DIR/lib - a board's "", .frozen,
  /lib - so a frozen module shadows a copy in lib/ as it does on an ESP32.
- The interpreter runs on its own pty, which is its controlling terminal, so a
  Ctrl-C byte from the line interrupts running code (SIGINT from the line
  discipline), while the REPL, which reads in raw mode, gets it as a character.
  Input that arrives while the interpreter restarts is held until the new
  one has installed its Ctrl-C handler, so mpremote's "Ctrl-C, Ctrl-A" after a
  reset is neither lost nor fatal.
- `machine.reset()`: the unix port has none; a shim module adds it (a "hard"
  reset: the board comes back in the friendly REPL and runs main.py). The
  shims and the start-up are MicroPython files in tools/device/.
- Output with nobody attached to the line is dropped, as a UART does; the
  firmware never blocks on a console no one reads.
- `--romfs-bytes N`: a ROMFS partition of N bytes, as a board built with
  MICROPY_VFS_ROM has: `vfs.rom_ioctl` (what `mpremote romfs` and
  `make deploy ROMFS=1` use) over a file that stands in for memory-mapped
  flash (erase sets bytes to 0xFF, a write can only clear bits), and at
  start-up an image found there is mounted at /rom with /rom and /rom/lib
  first on sys.path, as a board's boot does.

Output is passed through unchanged: the unix port prints "\\n" where a board
prints "\\r\\n", which mpremote does not mind; a terminal may show stair steps.
Stops on SIGTERM/SIGINT (exit 0).
"""

import argparse
import errno
import fcntl
import os
import select
import shutil
import signal
import sys
import tempfile
import termios
import time
import tty
from pathlib import Path

from tools import children, device

ROOT = Path(__file__).resolve().parent.parent
MICROPYTHON = ROOT / "build" / "venv" / "bin" / "micropython"

# First bytes every interpreter writes: from then on its Ctrl-C handler is in
# place and held input can be delivered. Stripped from the output.
READY_MARK = b"\x1b]v2g-bridge-up\x07"
# The REPL's own banners tell which REPL the interpreter is in.
RAW_BANNER = b"raw REPL; CTRL-B to exit"
FRIENDLY_BANNER = b'Type "help()" for more information.'
CTRL_A = b"\x01"

OUT_CAP = 64 * 1024  # bytes kept for a client that reads slowly; oldest dropped beyond
IN_CAP = 64 * 1024  # bytes kept for an interpreter not reading stdin (a UART's RX overflow)
MIN_LIFE_S = 1.0  # an interpreter that dies sooner than this counts as short-lived
SHORT_LIVES = 3  # after this many short lives in a row, pause before each restart
RESTART_PAUSE_S = 0.5
MAX_EARLY_DEATHS = 5  # died before READY_MARK this many times in a row: give up

# The board-side programs (tools/device/): the start-up each interpreter
# runs, and the modules it finds on its path: machine with reset(), and vfs
# with rom_ioctl for --romfs-bytes.
BOOT = "bridge_boot"
SHIMS = device.DIR / "bridge"


def _raw_with_isig(fd):
    """Raw mode (no echo, no CR/LF translation: mpremote's protocol is bytes)
    but with ISIG, so Ctrl-C raises SIGINT while code runs. The unix port
    turns ISIG off itself while its REPL reads a line. Quit and suspend keys
    are disabled; NOFLSH keeps queued bytes when Ctrl-C arrives (a board's
    UART does not drop them either)."""
    tty.setraw(fd)
    attr = termios.tcgetattr(fd)
    attr[3] |= termios.ISIG | termios.NOFLSH
    attr[6][termios.VQUIT] = 0
    attr[6][termios.VSUSP] = 0
    termios.tcsetattr(fd, termios.TCSANOW, attr)


def _take_controlling_tty():
    # Runs in the child after setsid(): make stdin (the pty) the controlling
    # terminal, so the line discipline's SIGINT reaches this process.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _set_nonblocking(fd):
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


class Interpreter:
    """One micropython process on its own pty."""

    def __init__(self, cmd, cwd, env):
        self.master, slave = os.openpty()
        _raw_with_isig(slave)
        self.proc = children.spawn(cmd, stdin=slave, stdout=slave, stderr=slave, cwd=cwd,  # dies with the bridge
                                   env=env, start_new_session=True,
                                   preexec_fn=_take_controlling_tty, close_fds=True)
        os.close(slave)
        _set_nonblocking(self.master)
        self.started = time.monotonic()
        self.ready = False  # READY_MARK seen
        self.head = b""  # output before READY_MARK was complete

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def close(self):
        self.kill()
        os.close(self.master)


class Bridge:
    def __init__(self, root, run_main=True, micropython=MICROPYTHON, romfs_bytes=0, romfs_file=None):
        self.root = Path(root).resolve()
        self.run_main = run_main
        self.micropython = str(micropython)
        self.state_dir = Path(tempfile.mkdtemp(prefix="pty_bridge."))
        self.reset_flag = self.state_dir / "hard_reset"
        self.romfs_bytes = romfs_bytes
        self.romfs_file = None
        if romfs_bytes:
            # the flash outlives the bridge when the file is given (as it
            # outlives a power cycle); a new or resized one starts erased
            self.romfs_file = Path(romfs_file or self.state_dir / "romfs0.bin").resolve()
            if not self.romfs_file.exists() or self.romfs_file.stat().st_size != romfs_bytes:
                self.romfs_file.write_bytes(b"\xff" * romfs_bytes)
        # The serial line. The bridge keeps no slave fd open, so the master
        # reports POLLHUP exactly when no client has the port open.
        self.link, slave = os.openpty()
        tty.setraw(slave)
        self.port = os.ttyname(slave)
        os.close(slave)
        _set_nonblocking(self.link)
        self.to_link = bytearray()
        self.to_interp = bytearray()
        self.raw_repl = False  # which REPL the interpreter was last in
        self.tail = b""  # last output bytes, to find banners split across reads
        self.early_deaths = 0
        self.short_lives = 0
        self.interp = None
        self.stopping = False

    # -- interpreter life cycle -------------------------------------------

    def _env(self):
        env = dict(os.environ)
        env["MICROPYPATH"] = f"{self.root}:{SHIMS}:.frozen:{self.root}/lib"
        # behave as a board: Ctrl-C stops the cloud link, not the control loop
        env["V2G_REPL"] = "1"
        # where the shims keep their state (tools/device/bridge/)
        env["V2G_BRIDGE_RESET_FLAG"] = str(self.reset_flag)
        if self.romfs_file is not None:
            env["V2G_BRIDGE_ROMFS_FILE"] = str(self.romfs_file)
        return env

    def start(self, friendly):
        names = ("boot.py", "main.py") if friendly and self.run_main else ("boot.py",)
        code = device.program(BOOT, {"mark": READY_MARK.decode(), "romfs": self.romfs_bytes > 0,
                                     "names": list(names)})
        if not friendly:
            # Back to the raw REPL, before anything the client sent meanwhile.
            self.to_interp[:0] = CTRL_A
        self.raw_repl = not friendly
        self.interp = Interpreter([self.micropython, "-i", "-c", code], self.root, self._env())

    def restart(self):
        it = self.interp
        lived = time.monotonic() - it.started
        if not it.ready:
            self.early_deaths += 1
            if self.early_deaths >= MAX_EARLY_DEATHS:
                sys.stderr.write("pty_bridge: micropython exits at start-up: %r\n" % it.head[-300:])
                raise SystemExit(1)
        else:
            self.early_deaths = 0
        it.close()
        self.interp = None
        hard = self.reset_flag.exists()
        if hard:
            self.reset_flag.unlink()
        self.short_lives = self.short_lives + 1 if lived < MIN_LIFE_S else 0
        if self.short_lives >= SHORT_LIVES:
            # A reset loop (main.py calling sys.exit, say) must not spin; a
            # few quick resets in a row (mpremote commands) are normal.
            time.sleep(RESTART_PAUSE_S)
        self._queue_out(b"MPY: soft reboot\r\n")
        self.start(friendly=hard or not self.raw_repl)

    # -- byte relay --------------------------------------------------------

    def _queue_out(self, data):
        self.to_link += data
        if len(self.to_link) > OUT_CAP:
            del self.to_link[:len(self.to_link) - OUT_CAP]

    def _track_repl(self, data):
        text = self.tail + data
        raw_at, friendly_at = text.rfind(RAW_BANNER), text.rfind(FRIENDLY_BANNER)
        if raw_at > friendly_at:
            self.raw_repl = True
        elif friendly_at > raw_at:
            self.raw_repl = False
        self.tail = text[-64:]

    def _from_interp(self):
        it = self.interp
        try:
            data = os.read(it.master, 4096)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            data = b""
        if not data:  # EIO: every holder of the pty has gone, i.e. the process ended
            self.restart()
            return
        if not it.ready:
            it.head += data
            if READY_MARK not in it.head:
                return
            before, _, data = it.head.partition(READY_MARK)
            it.ready = True
            self._queue_out(before)
        self._track_repl(data)
        self._queue_out(data)

    def _from_link(self):
        try:
            data = os.read(self.link, 4096)
        except (BlockingIOError, OSError):
            return
        self.to_interp += data
        if len(self.to_interp) > IN_CAP:
            del self.to_interp[:len(self.to_interp) - IN_CAP]

    def _write(self, fd, buf):
        try:
            n = os.write(fd, buf)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            n = len(buf)  # nobody there: the bytes go nowhere, as on a UART
        del buf[:n]

    def _client_attached(self):
        p = select.poll()
        p.register(self.link, select.POLLIN)
        return not any(ev & select.POLLHUP for _, ev in p.poll(0))

    def step(self, timeout_s=0.1):
        it = self.interp
        attached = self._client_attached()
        if not attached:
            self.to_link.clear()  # no listener: output is lost, as on a UART
        rlist, wlist = [it.master], []
        if attached:
            rlist.append(self.link)
            if self.to_link:
                wlist.append(self.link)
        if self.to_interp and it.ready:
            wlist.append(it.master)
        # Without a client the link would report HUP at once: poll it by timer.
        r, w, _ = select.select(rlist, wlist, [], timeout_s if attached else min(timeout_s, 0.05))
        if self.link in w:
            self._write(self.link, self.to_link)
        if it.master in w:
            self._write(it.master, self.to_interp)
        if self.link in r:
            self._from_link()
        if it.master in r:
            self._from_interp()
        elif it.proc.poll() is not None and not select.select([it.master], [], [], 0)[0]:
            self.restart()  # ended without the pty reporting it (nothing left to read)

    def run(self):
        self.start(friendly=True)
        while not self.stopping:
            self.step()

    def close(self):
        if self.interp is not None:
            self.interp.close()
            self.interp = None
        os.close(self.link)
        shutil.rmtree(self.state_dir, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.pty_bridge", description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, help="the board's filesystem (created if missing)")
    p.add_argument("--link-file", help="write the serial port's path here")
    p.add_argument("--no-main", action="store_true", help="never run main.py (boot.py still runs)")
    p.add_argument("--micropython", default=str(MICROPYTHON), help="the unix port binary")
    p.add_argument("--romfs-bytes", type=int, default=0, help="give the board a ROMFS partition this large")
    p.add_argument("--romfs-file", help="with --romfs-bytes: the file that holds the partition (kept)")
    args = p.parse_args(argv)

    if not os.access(args.micropython, os.X_OK):
        print(f"pty_bridge: no MicroPython unix port at {args.micropython} (run `make setup`)", file=sys.stderr)
        return 2
    Path(args.root).mkdir(parents=True, exist_ok=True)
    if args.romfs_bytes < 0 or args.romfs_bytes % 4096:
        print("pty_bridge: --romfs-bytes must be a multiple of 4096", file=sys.stderr)
        return 2
    bridge = Bridge(args.root, run_main=not args.no_main, micropython=args.micropython,
                    romfs_bytes=args.romfs_bytes, romfs_file=args.romfs_file)

    def stop(signum, frame):
        bridge.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.link_file:
        tmp = args.link_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(bridge.port + "\n")
        os.replace(tmp, args.link_file)  # readers never see a half-written path
    print("READY port=" + bridge.port, flush=True)
    try:
        bridge.run()
    finally:
        bridge.close()
        if args.link_file:
            try:
                os.unlink(args.link_file)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
