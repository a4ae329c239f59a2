"""`make run CONFIG=FILE`: the firmware on the unix port until SIGINT/SIGTERM.

The firmware runs in its own process group with SIGINT and SIGTERM blocked
(a mask exec keeps): they stay pending, and its cloud loop reads the pending
set and stops cleanly (0 W, then `offline`), as for Ctrl-C. The unix port's
own SIGINT handler is never used: it breaks the port's garbage collector
with two threads (firmware/v2g/hal/stopsig.py). This launcher turns every
SIGINT or SIGTERM it gets into exactly one SIGINT for the firmware: a
Ctrl-C in the terminal or a SIGTERM to the whole group (timeout, systemd)
reaches the firmware once, never a second time in the middle of its stop.
A third signal while it stops ends it with SIGKILL (the inverter's
reversion timer then takes it to 0 W). The firmware's exit status is passed
through (0 on a clean stop, 2 on a bad config). Should the launcher itself
die (kill -9), the kernel gives the firmware its SIGINT (tools/children.py).
"""
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tools import children  # noqa: E402


def _child_setup():
    os.setpgid(0, 0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # both blocked (a mask exec keeps): pending, read by the firmware's
    # cloud loop, never taken by the port's handler, which breaks its GC
    children.block_stop_signals()


def main(argv):
    if len(argv) != 1:
        print("usage: run_unix.py CONFIG", file=sys.stderr)
        return 2
    env = dict(os.environ)
    env["MICROPYPATH"] = f"{ROOT / 'firmware'}:{ROOT / 'build' / 'lib'}:.frozen"
    mp = str(ROOT / "build" / "venv" / "bin" / "micropython")
    cmd = [mp, str(ROOT / "firmware" / "main.py"), argv[0], "--boards", str(ROOT / "board_configs")]
    signals = []
    procs = []  # the child, once started; a signal before then is kept for it

    def forward(signum, frame):
        signals.append(signum)
        if not procs:
            return
        if len(signals) == 1:
            procs[0].send_signal(signal.SIGINT)
        elif len(signals) == 3:
            print("run_unix: forced stop (SIGKILL); the inverter's reversion timer takes it to 0 W",
                  file=sys.stderr)
            procs[0].kill()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    proc = children.spawn(cmd, stop_sig=signal.SIGINT, death_sig=signal.SIGINT, env=env, preexec_fn=_child_setup)
    procs.append(proc)
    if signals:
        proc.send_signal(signal.SIGINT)
    while True:
        try:
            rc = proc.wait()
            break
        except InterruptedError:
            continue
    # a signal death (kill -9) as the shell reports it
    return 128 - rc if rc < 0 else rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
