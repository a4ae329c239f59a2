"""Nothing left running (tools/children.py). `make sim` (python -m tools.sim)
ends every process it started on every way out: a start that fails (broker
missing, a port taken), Ctrl-C, SIGTERM, SIGHUP, and a kill -9 of the sim
itself (the kernel's parent-death signal). So does `make run`'s launcher
when it is killed, and a pytest run ends what a test left behind. Each run
has a tag of its own in its environment, which its children inherit;
whatever carries the tag after it exited was left behind."""
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

from conftest import ROOT, site_config
from tools.children import end_tagged, tagged

TAG = "V2G_SIM_TAG"


@pytest.fixture
def tag():
    """This test's tag; what carries it is ended afterwards whatever the outcome."""
    value = uuid.uuid4().hex
    yield value
    end_tagged(TAG, value)


def start_sim(tmp_path, tag, *args, env=None):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.sim", "--quiet", "--wall-s", "120", "--out", str(tmp_path / "sim"), *args],
        cwd=ROOT, env=dict(os.environ, **{TAG: tag}, **(env or {})), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)  # its own group, as a shell job is
    return proc


def finish(proc, timeout=60):
    """-> (stdout, stderr) once the sim exited; a sim that does not is
    killed with its group (a failing test leaves nothing either)."""
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def left_behind(tag, sim_pid):
    """What still runs with the sim's tag, once it has had a moment to go."""
    deadline = time.monotonic() + 15  # bounds the wait only
    while True:
        left = {pid: cmd for pid, cmd in tagged(TAG, tag).items() if pid != sim_pid}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


@pytest.fixture
def taken_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    yield s.getsockname()[1]
    s.close()


START_FAILURES = {
    # the broker fails after the inverter simulator was started
    "mosquitto missing": (["--broker", "mosquitto"], "mosquitto is not installed"),
    "broker port taken": (["--broker", "mosquitto", "--broker-port", "{port}"], "broker port {port} is taken"),
    "embedded broker port taken": (["--broker", "embedded", "--broker-port", "{port}"],
                                   "broker port {port} is taken"),
    # the first child fails
    "inverter port taken": (["--inverter-port", "{port}"], "inverter simulator: cannot listen on 127.0.0.1:{port}"),
}


@pytest.mark.parametrize("case", START_FAILURES)
def test_failed_start_says_why_in_one_line_and_leaves_nothing(tmp_path, tag, taken_port, case):
    args, says = START_FAILURES[case]
    args = [a.format(port=taken_port) for a in args]
    # no mosquitto on PATH nor in the sbin directory the lookup also tries
    env = {"PATH": os.path.dirname(sys.executable), "V2G_SBIN": str(tmp_path / "no-sbin")}
    proc = start_sim(tmp_path, tag, *args, env=env if case == "mosquitto missing" else None)
    out, err = finish(proc)
    assert proc.returncode == 2, (out, err)
    assert out == "" and err.endswith("\n") and err.count("\n") == 1, (out, err)
    assert err.startswith("sim: cannot start: ") and says.format(port=taken_port) in err, err
    if "broker" in case or "mosquitto" in case:
        # the inverter simulator was running (its state file is written once it listens)
        assert (tmp_path / "sim" / "inverter_state.json").exists()
    assert left_behind(tag, proc.pid) == {}


STOPS = {
    # Ctrl-C in a terminal: SIGINT to the whole foreground group
    "ctrl-c": (lambda p: os.killpg(p.pid, signal.SIGINT), 130),
    "sigint": (lambda p: p.send_signal(signal.SIGINT), 130),
    "sigterm": (lambda p: p.send_signal(signal.SIGTERM), 128 + signal.SIGTERM),
    "sighup": (lambda p: p.send_signal(signal.SIGHUP), 128 + signal.SIGHUP),
    "kill -9": (lambda p: p.kill(), -signal.SIGKILL),
}


@pytest.mark.parametrize("how", STOPS)
def test_stopped_sim_leaves_nothing(tmp_path, tag, how):
    stop, rc = STOPS[how]
    vehicle = how in ("sigterm", "kill -9")  # the car's simulator too
    proc = start_sim(tmp_path, tag, "--broker", "mosquitto", *(["--vehicle"] if vehicle else []))
    want = ["tools.sim.inverter_main", "mosquitto", "firmware/main.py"] + (["tools.sim.vehicle"] if vehicle else [])
    deadline = time.monotonic() + 60
    while True:
        running = " | ".join(cmd for pid, cmd in tagged(TAG, tag).items() if pid != proc.pid)
        if all(w in running for w in want) or proc.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if proc.poll() is None:
        stop(proc)
    out, err = finish(proc)
    assert all(w in running for w in want), (running, err)
    assert proc.returncode == rc, err
    if rc == 130:
        assert err.strip().splitlines()[-1] == "sim: interrupted", err
    assert left_behind(tag, proc.pid) == {}


def test_make_run_launcher_killed_its_firmware_stops(tmp_path, tag):
    """tools/run_unix.py (`make run`) SIGKILLed: the firmware it started, in
    its own process group, is not left running (the kernel sends it SIGINT)."""
    cfg, _ = site_config(tmp_path, 9, 9)  # nothing listens there: no inverter, no broker
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "run_unix.py"), str(cfg)], cwd=ROOT,
                            env=dict(os.environ, **{TAG: tag}), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not any("firmware/main.py" in c for c in tagged(TAG, tag).values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any("firmware/main.py" in c for c in tagged(TAG, tag).values()) and proc.poll() is None
    proc.kill()
    proc.wait()
    assert left_behind(tag, proc.pid) == {}


LEAKY_TEST = '''
import subprocess, sys, time
def test_leaks_a_child():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    print("STARTED", flush=True)
    time.sleep({sleep})
    assert False
'''


@pytest.mark.parametrize("how", ["fails", "sigterm"])
def test_pytest_run_ends_what_a_test_left_running(tmp_path, tag, how):
    """conftest's sweep: a child a test started and never ended (the test
    failed, or the run got SIGTERM) is ended when the pytest run ends."""
    (tmp_path / "test_leaky.py").write_text(LEAKY_TEST.format(sleep=0 if how == "fails" else 600))
    env = dict(os.environ, **{TAG: tag}, PYTHONPATH=str(ROOT / "host_tests"))
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "conftest", "-q", "-s", "-p", "no:cacheprovider",
                             str(tmp_path / "test_leaky.py")], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    assert proc.stdout.readline().strip().endswith("STARTED")
    assert any("time.sleep(600)" in c for c in tagged(TAG, tag).values())
    if how == "sigterm":
        proc.send_signal(signal.SIGTERM)
    out, _ = finish(proc)
    assert proc.returncode != 0, out
    assert "left running" in out, out
    assert left_behind(tag, proc.pid) == {}
