"""`make run CONFIG=FILE`: the firmware on the unix port until SIGINT/SIGTERM.

The unix port has no `signal` module, so this launcher turns SIGTERM into
SIGINT (a KeyboardInterrupt in the firmware, which stops cleanly) and passes
the firmware's exit status through (0 on a clean stop, 2 on a bad config).
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv):
    if len(argv) != 1:
        print("usage: run_unix.py CONFIG", file=sys.stderr)
        return 2
    env = dict(os.environ)
    env["MICROPYPATH"] = f"{ROOT / 'firmware'}:{ROOT / 'build' / 'lib'}:.frozen"
    mp = str(ROOT / "build" / "venv" / "bin" / "micropython")
    cmd = [mp, str(ROOT / "firmware" / "main.py"), argv[0], "--boards", str(ROOT / "board_configs")]
    proc = subprocess.Popen(cmd, env=env)

    def forward(signum, frame):
        proc.send_signal(signal.SIGINT)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        try:
            return proc.wait()
        except InterruptedError:
            continue


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
