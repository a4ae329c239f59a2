"""Stop signals on the unix port are polled, not handled (firmware/v2g/hal/
stopsig.py): the launcher blocks SIGINT and SIGTERM, the firmware reads the
process's pending set. The reader, the mask's inheritance, and the firmware
stopping cleanly on a SIGTERM sent to it directly."""
import signal
import subprocess
import time

import pytest

from conftest import MICROPYTHON, MP, ROOT, mp_env, run_mp, site_config
from tools import children
from tools.harness import Firmware

# a status file as Linux writes it, the fields this reads placed across the
# reader's 64-byte chunks
HEAD = "Name:\tmicropython\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\n" + "VmPeak:\t  123456 kB\n" * 7


def status(pending, blocked):
    return (HEAD + "SigQ:\t0/31484\nSigPnd:\t0000000000000002\n"  # this thread's own: not ours to read
            f"ShdPnd:\t{pending:016x}\nSigBlk:\t{blocked:016x}\nSigIgn:\t0000000000001000\n"
            "Cpus_allowed:\t3\n")


@pytest.mark.parametrize("pending,blocked,expect", [
    (0x0000000000000002, 0x4002, "enabled True pending True"),  # SIGINT
    (0x0000000000004000, 0x4002, "enabled True pending True"),  # SIGTERM
    (0x8000000000004200, 0x4002, "enabled True pending True"),  # with others, high bits too
    (0x0000000000000200, 0x4002, "enabled True pending False"),  # SIGUSR1 only
    (0x0000000000000000, 0x4002, "enabled True pending False"),
    (0x0000000000000002, 0x0002, "enabled False pending False"),  # SIGTERM open: the port's handler
    (0x0000000000000002, 0x0000, "enabled False pending False"),
])
def test_the_pending_set_is_read_from_the_status_file(tmp_path, pending, blocked, expect):
    p = tmp_path / "status"
    p.write_text(status(pending, blocked))
    assert run_mp("stopsig_probe", p).lines() == [expect]


def test_a_missing_status_file_is_a_board_and_disables_it(tmp_path):
    assert run_mp("stopsig_probe", tmp_path / "none").lines() == ["enabled False pending False"]


def _probe(preexec):
    return subprocess.Popen([MICROPYTHON, str(MP / "stopsig_probe.py"), "live"], stdout=subprocess.PIPE,
                            text=True, env=mp_env(), cwd=ROOT, preexec_fn=preexec)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_blocked_signal_is_seen_pending_and_no_handler_runs(sig):
    proc = _probe(children.block_stop_signals)
    try:
        assert proc.stdout.readline() == "enabled True\n"
        proc.send_signal(sig)
        proc.send_signal(sig)  # a second one merges into the first
        out, _ = proc.communicate(timeout=15)
    finally:
        children.end(proc)
    assert proc.returncode == 0 and out == "stop seen\npending True\n"


def test_open_signals_leave_it_disabled():
    proc = _probe(None)
    try:
        assert proc.stdout.readline() == "enabled False\n"
        proc.send_signal(signal.SIGINT)  # the port's own KeyboardInterrupt
        out, _ = proc.communicate(timeout=15)
    finally:
        children.end(proc)
    assert "stop seen" not in out and proc.returncode != 0


def test_the_firmware_stops_cleanly_on_a_sigterm_sent_to_it(tmp_path, broker, live_inverter):
    """SIGTERM used to kill the unix port on the spot (power still flowing,
    without the launcher's SIGINT); blocked, it is a clean stop: 0 W, then
    `offline`, exit 0."""
    b = broker()
    inv = live_inverter()
    cfg_path, _ = site_config(tmp_path, inv.port, b.port)
    fw = Firmware(cfg_path, {"V2G_CLOCK": inv.clock.to_env()})
    try:
        assert fw.wait_event("mode", timeout=20)
        t_sig = time.time()
        rc = fw.stop(signal.SIGTERM)
    finally:
        children.end(fw.proc)
    out = fw.output()
    assert rc == 0, out[-2000:]
    assert time.time() - t_sig < 10
    assert fw.events("stop"), out[-2000:]
    assert inv.inv.writes and inv.inv.writes[-1][1] == 0
