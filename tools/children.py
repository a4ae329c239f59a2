"""One way to start and end the child processes of the simulator, the
benches and the test harness, so that none outlives its parent on any path
out (normal exit, an exception during start-up, Ctrl-C, SIGTERM, kill -9):

- spawn() is subprocess.Popen whose child the kernel sends SIGKILL (or
  `death_sig`) when the thread that started it ends (Linux
  PR_SET_PDEATHSIG), even if the parent itself was SIGKILLed; start
  children from a thread that lives as long as they should (the main one);
- end() asks a child to stop with its stop signal, then makes sure;
- every child spawn() started and nobody ended yet is ended at interpreter
  exit (atexit: a return, an uncaught exception, Ctrl-C), in reverse order;
- exit_on_signals() turns SIGTERM and SIGHUP into SystemExit(128 + signal),
  so `finally` blocks and atexit run for them too.
"""
import atexit
import ctypes
import os
import shutil
import signal
import subprocess
import time

_PR_SET_PDEATHSIG = 1
_live = []  # spawned and not ended, oldest first
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: no kernel safeguard, end() and atexit remain
    _prctl = None


def _dies_with_parent(death_sig, then):
    parent = os.getpid()

    def setup():  # runs in the child between fork and exec
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, int(death_sig), 0, 0, 0)
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)
        if then is not None:
            then()
    return setup


def spawn(cmd, stop_sig=signal.SIGTERM, death_sig=signal.SIGKILL, preexec_fn=None, **popen_kw):
    """subprocess.Popen(cmd, **popen_kw) for a child that dies with this
    process; end() stops it with stop_sig. preexec_fn still runs in the child."""
    _live[:] = [p for p in _live if p.poll() is None]  # ended by their owners meanwhile
    proc = subprocess.Popen(cmd, preexec_fn=_dies_with_parent(death_sig, preexec_fn), **popen_kw)
    proc.stop_sig = stop_sig
    _live.append(proc)
    return proc


def block_stop_signals():
    """For preexec_fn: the child starts with SIGINT and SIGTERM blocked (a
    mask exec keeps). The firmware on the unix port then reads them as
    pending instead of taking them in a handler (firmware/v2g/hal/stopsig.py
    says why: the port's handler breaks its garbage collector)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


def end(proc, sig=None, timeout=10):
    """Ask a child to stop (sig, else the stop signal it was spawned with),
    then make sure: SIGKILL after `timeout` s. -> its exit status."""
    try:
        if proc.poll() is None:
            proc.send_signal(sig or getattr(proc, "stop_sig", signal.SIGTERM))
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.hung_threads = threads_of(proc.pid)
                proc.kill()
                proc.wait(5)
    finally:
        if proc in _live:
            _live.remove(proc)
    return proc.returncode


def threads_of(pid):
    """What each thread of a live process is doing, from /proc (no
    debugger needed): "tid state wchan syscall" lines. Taken just before a
    hung child is killed: a thread asleep in futex_wait while another polls
    tells a lock from a slow peer, the one clue a CI log can keep."""
    lines = []
    try:
        tids = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
    except OSError:
        return ""
    for tid in tids:
        parts = [tid]
        for name in ("stat", "wchan", "syscall"):
            try:
                with open(f"/proc/{pid}/task/{tid}/{name}") as f:
                    text = f.read().strip()
            except OSError:
                text = "?"
            if name == "stat":
                text = text.rsplit(")", 1)[-1].split()[0]
            elif name == "syscall":
                text = " ".join(text.split()[:3])  # number, first two arguments
            parts.append(text)
        lines.append(" ".join(parts))
    gdb = shutil.which("gdb")
    if gdb:
        # with a debugger on the machine, where in the code each thread is
        try:
            res = subprocess.run([gdb, "-p", str(pid), "-batch", "-ex", "thread apply all bt 20"],
                                 capture_output=True, text=True, timeout=60)
            lines.append(res.stdout[-6000:])
        except (OSError, subprocess.SubprocessError) as e:
            lines.append(f"gdb: {e}")
    return "\n".join(lines)


def end_all():
    """End every child spawn() started that is still to be ended, newest first."""
    while _live:
        end(_live[-1])


atexit.register(end_all)


def exit_on_signals(sigs=(signal.SIGTERM, signal.SIGHUP)):
    """SIGTERM/SIGHUP raise SystemExit(128 + signal) in the main thread."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)

    for s in sigs:
        signal.signal(s, handler)


def tagged(name, value):
    """{pid: command line} of the live processes (zombies aside) whose
    environment has name=value: children, grandchildren and orphans of
    whoever set it in its own environment before starting them."""
    mark = f"{name}={value}".encode()
    found = {}
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):  # gone meanwhile, or not ours to read
            continue
        if state != b"Z" and mark in env:
            found[int(d)] = cmd
    return found


def end_tagged(name, value, timeout=5):
    """SIGTERM, then SIGKILL after `timeout` s, every process tagged(name,
    value) finds. -> {pid: command line} of those it found."""
    found = tagged(name, value)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in tagged(name, value):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        while tagged(name, value) and time.monotonic() < deadline:
            time.sleep(0.05)
    return found
