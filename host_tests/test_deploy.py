"""`make deploy` end to end against the unix port presented as a board by
tools/pty_bridge.py (and a plain unix-port REPL under socat): mpremote over
a pty, files landing in a scratch root that then runs the deployed firmware
against the simulated inverter.

No test depends on another one's state: a test that needs a deployed board
gets its own (`deployed`: a copy of the tree one deploy wrote, behind its own
bridge), every deploy builds into the test's own directory, and any one test
runs alone (`-k NAME`) or in any order."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import MICROPYTHON, ROOT, run_mp
from tools import children
from tools.harness import InverterProcess, ToolProcess

MPREMOTE = str(ROOT / "build" / "venv" / "bin" / "mpremote")
DEPLOY_S = 60  # generous bound for one deploy; one takes a few seconds


def start_bridge(root, *args, log):
    """tools.pty_bridge on `root` (the board's filesystem) -> the running
    bridge; its serial port is `.ready`."""
    return ToolProcess("tools.pty_bridge", ["--root", root, *args], ready="READY port=", log=log,
                       name="pty_bridge")


def _board(root, log):
    """The simulated board on `root` (no main.py at boot): yields (serial
    port, its filesystem root)."""
    link = root.parent / "port"
    bridge = start_bridge(root, "--no-main", "--link-file", link, log=log)
    port = bridge.ready
    assert link.read_text().strip() == port
    yield port, root
    bridge.stop()
    assert not link.exists()  # removed on a clean stop


@pytest.fixture(scope="module")
def inverter(tmp_path_factory):
    """The simulated inverter (read only: what runs against it changes nothing for the next)."""
    inv = InverterProcess(log=tmp_path_factory.mktemp("inverter") / "inverter.log")
    yield inv.port
    inv.stop()


def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _site_writer(d, inverter):
    def write(name="site.json", **changes):
        cfg = json.loads((ROOT / "examples" / "site.json").read_text())
        cfg["inverter"]["link"] = f"tcp:127.0.0.1:{inverter}"
        cfg["mqtt"]["port"] = _closed_port()
        for path, value in changes.items():
            section, _, key = path.rpartition("__")
            (cfg[section] if section else cfg)[key] = value
        p = d / name
        p.write_text(json.dumps(cfg, indent=2))
        return p, cfg

    return write


@pytest.fixture
def site(tmp_path, inverter):
    """Writes a valid unix_sim site config (with changes) -> (path, dict);
    MQTT points at a closed port (the broker is not what this test is about)."""
    d = tmp_path / "site"
    d.mkdir()
    return _site_writer(d, inverter)


def run_deploy(build, port, config, *extra, board_name="unix_sim"):
    """`python -m tools.deploy`, building into `build` -> CompletedProcess (+ elapsed)."""
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "tools.deploy", "--board", board_name, "--port", port,
                          "--config", str(config), "--build-dir", str(build), *extra],
                         capture_output=True, text=True, cwd=ROOT, timeout=DEPLOY_S, stdin=subprocess.DEVNULL)
    res.elapsed = time.monotonic() - t0
    return res


@pytest.fixture
def deploy(tmp_path):
    """deploy(port, config, *extra) as `make deploy` runs it, building into
    this test's directory (deploy.build / BOARD holds the build and manifest)."""
    build = tmp_path / "deploy-build"

    def go(port, config, *extra, board_name="unix_sim"):
        return run_deploy(build, port, config, *extra, board_name=board_name)

    go.build = build
    return go


def failure_line(res):
    """A failure is exactly one line on stderr and never a traceback."""
    assert "Traceback" not in res.stdout + res.stderr, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


@pytest.fixture(scope="module")
def first_deploy(tmp_path_factory, inverter):
    """One deploy to a fresh board, once: {"res", "root", "build", "config",
    "cfg"}. Tests never touch its tree; `deployed` copies it."""
    d = tmp_path_factory.mktemp("first")
    config, cfg = _site_writer(d, inverter)()
    gen = _board(d / "board" / "fs", d / "bridge.log")
    port, root = next(gen)
    try:
        res = run_deploy(d / "deploy-build", port, config)
    finally:
        next(gen, None)  # the bridge stopped: the tree is all written
    return {"res": res, "root": root, "build": d / "deploy-build", "config": config, "cfg": cfg}


@pytest.fixture
def deployed(first_deploy, tmp_path):
    """A board of this test's own that holds what a first deploy wrote (a
    copy of first_deploy's tree, behind a bridge of its own) -> (that
    deploy's result, port, root, config, config dict)."""
    assert first_deploy["res"].returncode == 0, first_deploy["res"].stdout + first_deploy["res"].stderr
    root = tmp_path / "board" / "fs"
    shutil.copytree(first_deploy["root"], root, symlinks=True)
    gen = _board(root, tmp_path / "bridge.log")
    port, root = next(gen)
    yield first_deploy["res"], port, root, first_deploy["config"], first_deploy["cfg"]
    next(gen, None)


def test_deploy_to_the_unix_board(deployed, first_deploy):
    res, port, root, config, cfg = deployed
    assert res.returncode == 0, res.stdout + res.stderr
    print(f"first deploy through the pty: {res.elapsed:.1f} s")
    for n in range(1, 8):
        assert f"[{n}/7]" in res.stdout
    assert "deploy: OK" in res.stdout
    # compiled modules only, boot.py/main.py as source, config and board config, umqtt in lib/
    mpys = sorted(p.relative_to(root).as_posix() for p in (root / "v2g").rglob("*.mpy"))
    assert "v2g/kernel.mpy" in mpys and "v2g/app.mpy" in mpys
    assert not list((root / "v2g").rglob("*.py"))
    assert (root / "boot.py").read_bytes() == (ROOT / "firmware" / "boot.py").read_bytes()
    assert (root / "main.py").read_bytes() == (ROOT / "firmware" / "main.py").read_bytes()
    assert json.loads((root / "config.json").read_text()) == cfg
    assert (root / "board_configs" / "unix_sim.json").read_bytes() == (ROOT / "board_configs" / "unix_sim.json").read_bytes()
    assert (root / "lib" / "umqtt" / "simple.py").exists()
    # the manifest names every file with its sha256
    manifest = json.loads((first_deploy["build"] / "unix_sim" / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"config.json", "board_configs/unix_sim.json", "main.py", *mpys}
    # secrets never printed
    assert cfg["command_key"] not in res.stdout + res.stderr


def test_redeploy_writes_only_changes_and_removes_stale_py_twins(deployed, deploy):
    res, port, root, config, cfg = deployed
    twin = root / "v2g" / "plan.py"  # would be imported instead of plan.mpy
    twin.write_text("raise ImportError('stale')\n")
    res = deploy(port, config)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "removed stale v2g/plan.py" in res.stdout
    assert "copied config.json" not in res.stdout  # unchanged files are not written again
    assert " unchanged" in res.stdout
    assert not twin.exists()


def test_a_corrupted_file_fails_verification_by_name(deployed, deploy):
    res, port, root, config, cfg = deployed
    target = root / "v2g" / "kernel.mpy"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit on the "device"
    target.write_bytes(bytes(data))
    res = deploy(port, config, "--verify-only")
    assert res.returncode == 1
    line = failure_line(res)
    assert line.startswith("deploy: FAILED at verify: ")
    assert "differ from the build: " in line and "v2g/kernel.mpy" in line
    # a real deploy repairs it
    res = deploy(port, config)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "copied v2g/kernel.mpy" in res.stdout


def test_config_for_another_board_fails_before_touching_the_board(site, deploy):
    config, _ = site("esp32.json", board="esp32_devkitc")
    res = deploy("/dev/does-not-exist", config)  # never opened: the check comes first
    assert res.returncode == 2
    assert failure_line(res) == ('deploy: FAILED at config: config error: board: the config is for '
                                 '"esp32_devkitc", not BOARD=unix_sim')
    assert "connecting" not in res.stdout


def test_invalid_config_exits_2_with_the_validators_line(site, deploy):
    config, _ = site("bad.json", battery__reserve_pct=95)
    res = deploy("/dev/does-not-exist", config)
    assert res.returncode == 2
    assert failure_line(res) == ("deploy: FAILED at config: config error: battery.soc_max_pct: "
                                 "must be >= battery.reserve_pct")


def _boards_dir(tmp_path, **changes):
    b = json.loads((ROOT / "board_configs" / "unix_sim.json").read_text())
    b.update(changes)
    (tmp_path / "unix_sim.json").write_text(json.dumps(b))
    return ["--boards-dir", str(tmp_path)]


def test_too_old_micropython_is_refused_before_copying(deployed, deploy, tmp_path):
    res, port, root, config, cfg = deployed
    res = deploy(port, config, *_boards_dir(tmp_path, min_micropython=[9, 0, 0]))
    assert res.returncode == 1
    line = failure_line(res)
    assert line.startswith("deploy: FAILED at device: the board runs MicroPython 1.")
    assert "unix_sim needs 9.0.0 or newer" in line
    assert "[5/7]" not in res.stdout


def test_wrong_native_arch_is_refused(deployed, deploy, tmp_path):
    res, port, root, config, cfg = deployed
    # a consistent board config for an RP2040 (armv6m), pointed at the x64 "board"
    res = deploy(port, config, *_boards_dir(tmp_path, chip="rp2040", mpy_arch="armv6m"))
    assert res.returncode == 1
    assert failure_line(res) == ("deploy: FAILED at device: the board's native code is x64, but board "
                                 "config unix_sim says armv6m: wrong BOARD for this device? "
                                 "(nothing was changed; the board was reset)")


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_romfs_deploy_needs_a_romfs_board_and_changes_nothing_without(deployed, deploy):
    res, port, root, config, cfg = deployed
    before = _tree(root)
    res = deploy(port, config, "--romfs")
    assert res.returncode == 1
    assert failure_line(res) == ("deploy: FAILED at device: this MicroPython image has no ROMFS partition "
                                 "(vfs.rom_ioctl): flash an image built with MICROPY_VFS_ROM, or deploy "
                                 "without ROMFS=1 (nothing was changed; the board was reset)")
    assert "[2/7] compile" in res.stdout and "ROMFS image" in res.stdout
    assert _tree(root) == before
    # the image it built holds every module, and they import from it
    image = deploy.build / "unix_sim" / "romfs.img"
    manifest = json.loads((deploy.build / "unix_sim" / "manifest.json").read_text())
    assert manifest["romfs"]["bytes"] == image.stat().st_size
    assert not [p for p in manifest["files"] if p.startswith("v2g/")]
    out = run_mp("deploy_romfs_imports", image)
    assert out.lines()[-1] == "ok"


def test_romfs_deploy_to_a_board_with_a_romfs_partition(site, deploy, tmp_path):
    """`make deploy ROMFS=1` to the simulated board given a 256 KB ROMFS
    partition (pty_bridge --romfs-bytes: rom_ioctl over a file standing in
    for flash): the image is written with `mpremote romfs deploy` and
    checked by sha256, no v2g/ lands on the filesystem, and after the reset
    the board runs the firmware from /rom. An unchanged image is not
    rewritten; a damaged one fails verification."""
    root, flash = tmp_path / "fs", tmp_path / "flash.bin"
    bridge = start_bridge(root, "--romfs-bytes", "262144", "--romfs-file", flash, log=tmp_path / "bridge.log")
    port = bridge.ready
    try:
        config, cfg = site()
        res = deploy(port, config, "--romfs")
        assert res.returncode == 0, res.stdout + res.stderr
        assert "ROMFS partition 256.0 kB" in res.stdout and "ROMFS image deployed" in res.stdout
        image = (deploy.build / "unix_sim" / "romfs.img").read_bytes()
        data = flash.read_bytes()
        assert data[:len(image)] == image
        assert set(data[-4096:]) == {0xFF}  # the rest of the partition is still erased
        assert not (root / "v2g").exists() and (root / "main.py").exists() and (root / "config.json").exists()

        # the board was reset into main.py: the firmware it runs came from /rom
        end, out = time.monotonic() + 20, ""
        while time.monotonic() < end:
            r = subprocess.run([MPREMOTE, "connect", port, "resume", "exec",
                                "import sys; m = sys.modules.get('v2g.app'); print(m and m.__file__)"],
                               capture_output=True, text=True, timeout=30)
            out = r.stdout.strip()
            if out.endswith(".mpy"):
                break
            time.sleep(0.5)
        assert out == "/rom/v2g/app.mpy", out

        # the same build again: the flash is left alone
        mtime = flash.stat().st_mtime_ns
        res = deploy(port, config, "--romfs")
        assert res.returncode == 0, res.stdout + res.stderr
        assert "ROMFS image unchanged, not rewritten" in res.stdout
        assert flash.stat().st_mtime_ns == mtime
    finally:
        bridge.stop()

    # one byte of the image damaged in flash: verification names it
    data = bytearray(flash.read_bytes())
    data[len(image) // 2] ^= 0x01
    flash.write_bytes(bytes(data))
    bridge = start_bridge(root, "--no-main", "--romfs-bytes", "262144", "--romfs-file", flash,
                          log=tmp_path / "bridge2.log")
    port = bridge.ready
    try:
        res = deploy(port, config, "--romfs", "--verify-only")
        assert res.returncode == 1
        assert failure_line(res).startswith("deploy: FAILED at verify: the board's ROMFS does not hold this "
                                            "build's image")
    finally:
        bridge.stop()


def test_another_sites_board_needs_yes(deployed, site, deploy):
    res, port, root, config, cfg = deployed
    other, _ = site("other.json", device_id="other-site")
    res = deploy(port, other)
    assert res.returncode == 1
    assert "configured as 'home-charger-01'; replace it with 'other-site'?" in failure_line(res)
    assert json.loads((root / "config.json").read_text())["device_id"] == "home-charger-01"
    res = deploy(port, other, "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads((root / "config.json").read_text())["device_id"] == "other-site"


def test_the_bridge_speaks_mpremote(deployed):
    """mpremote's own commands against the simulated board: exec (raw-paste),
    sha256sum, soft-reset (a new interpreter), reset."""
    res, port, root, config, cfg = deployed

    def mpr(*args):
        r = subprocess.run([MPREMOTE, "connect", port, *args], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    assert mpr("exec", "x = 6 * 7\nprint(x)").strip() == "42"
    import hashlib

    digest = hashlib.sha256((root / "config.json").read_bytes()).hexdigest()
    assert digest in mpr("sha256sum", ":config.json")
    # state survives `resume`, a soft reset starts a fresh interpreter
    mpr("exec", "survivor = 1")
    assert mpr("resume", "exec", "print('survivor' in globals())").strip() == "True"
    assert mpr("soft-reset", "exec", "print('survivor' in globals())").strip() == "False"
    mpr("reset")
    time.sleep(1.0)  # like any board, it takes a moment to come back; mpremote does not wait
    assert mpr("exec", "import os; print(os.getcwd())").strip() == str(root)


def run_deployed(root, env, main="main.py"):
    """`micropython main.py` in the board root until it has found the
    inverter and picked a mode, then SIGINT -> (first event of each kind,
    output lines, exit code)."""
    proc = subprocess.Popen([MICROPYTHON, main], cwd=root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=children.block_stop_signals)  # as make run starts it
    events, lines = {}, []

    def read():
        for line in proc.stdout:
            lines.append(line)
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict):
                events.setdefault(ev.get("ev"), ev)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        end = time.monotonic() + 15
        while time.monotonic() < end and not {"inverter", "mode"} <= set(events) and proc.poll() is None:
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        reader.join(5)
    return events, lines, rc


def test_deployed_firmware_runs_from_the_board_root(deployed, inverter):
    """The files on the "board" (not firmware/) start, find the inverter and
    pick a mode; SIGINT stops them cleanly."""
    res, port, root, config, cfg = deployed
    env = dict(os.environ, MICROPYPATH=f"{root}:{root}/lib:.frozen")
    events, lines, rc = run_deployed(root, env, main=str(root / "main.py"))
    assert_firmware_ran(events, lines, rc)
    # the firmware's files really came from the board root
    assert not any("/firmware/" in l for l in lines)


def assert_firmware_ran(events, lines, rc):
    """Started, found the inverter, picked a mode, stopped cleanly on SIGINT."""
    out = "".join(lines)[-2000:]
    assert {"start", "inverter", "mode"} <= set(events), out
    assert events["inverter"]["base"] == 40000
    assert events["mode"]["mode"] in ("idle", "charge", "discharge", "hold")
    assert rc == 0, out


def test_a_running_board_boots_main_and_takes_a_new_deploy(deployed, deploy, tmp_path):
    """Without --no-main the simulated board runs main.py at boot, as a real
    one does; a deploy session interrupts the running firmware (Ctrl-C, soft
    reset), verifies and resets it back into the firmware."""
    import serial

    res, port, root, config, cfg = deployed
    live = start_bridge(root, log=tmp_path / "live-bridge.log")
    live_port = live.ready
    try:
        with serial.Serial(live_port, timeout=0.2) as line:
            seen, end = b"", time.monotonic() + 15
            while time.monotonic() < end and b'"ev": "mode"' not in seen:
                seen += line.read(4096)
        assert b'"ev": "mode"' in seen, seen[-2000:]
        res = deploy(live_port, config, "--yes")  # --yes: whichever site's config the board holds
        assert res.returncode == 0, res.stdout + res.stderr
        assert "[7/7] reset    the board restarted" in res.stdout
    finally:
        live.stop()


def test_tls_files_go_to_the_board_with_the_config(deployed, site, deploy, tmp_path):
    """TLS files named in the config (relative to it) land under certs/ and
    the deployed config points there; their contents are never printed."""
    res, port, root, config, cfg = deployed
    config, cfg = site("tls.json")
    key_text = "-----BEGIN PRIVATE KEY----- not-a-real-key-0123456789"
    for name, data in (("ca.der", b"\x30\x82ca"), ("client.der", b"\x30\x82cert"), ("client.key", key_text.encode())):
        (config.parent / name).write_bytes(data)
    cfg["mqtt"]["tls"] = {"ca": "ca.der", "cert": "client.der", "key": "client.key"}
    config.write_text(json.dumps(cfg))
    res = deploy(port, config, "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    on_board = json.loads((root / "config.json").read_text())
    assert on_board["mqtt"]["tls"] == {"ca": "certs/ca.der", "cert": "certs/cert.der", "key": "certs/key.key"}
    assert (root / "certs" / "key.key").read_text() == key_text
    assert key_text not in res.stdout + res.stderr
    assert cfg["command_key"] not in res.stdout + res.stderr


def _plain_repl(root, env):
    """The unix port's own REPL started in `root` on a pty, as an installer
    can start one (socat, the pty in its default cooked mode) -> (socat, port).
    No tools.pty_bridge around it: the REPL's soft reset (Ctrl-D) ends the
    process, and socat's pty with it, and it has no machine.reset()."""
    link = root.parent / "plain-port"
    proc = subprocess.Popen(["socat", f"PTY,link={link},raw,echo=0",
                             f"EXEC:{MICROPYTHON},pty,stderr,ctty,setsid"],
                            cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    end = time.monotonic() + 10
    while not link.exists() and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.05)
    if not link.exists():
        proc.kill()
        raise RuntimeError(f"socat did not start: {proc.communicate()[1]!r}")
    # Until its REPL reads the line in raw mode, the pty is cooked: a Ctrl-C
    # byte there would be SIGINT to an interpreter still starting up. The
    # banner may be gone before the port is open; an empty line brings a prompt.
    import serial

    seen = b""
    with serial.Serial(str(link), timeout=0.5) as line:
        while b">>> " not in seen and time.monotonic() < end:
            line.write(b"\r")
            seen += line.read(4096)
    assert b">>> " in seen, seen
    return proc, str(link)


def test_deploy_to_a_plain_unix_repl(site, deploy, tmp_path, inverter):
    """A plain unix-port REPL started in the deploy's target directory is a
    board too. Its default sys.path has no lib, where the deploy puts umqtt:
    the self-test imports through the firmware's own start-up code (as
    main.py does), the REPL is still there afterwards (never soft-reset) and
    takes another deploy, and the deployed firmware starts from that
    directory with the default sys.path."""
    root = tmp_path / "target"
    root.mkdir()
    # The Makefile exports MICROPYPATH to every recipe: the "board" must not
    # inherit it. HOME: no ~/.micropython/lib of this machine on its path.
    env = {k: v for k, v in os.environ.items() if k != "MICROPYPATH"}
    env["HOME"] = str(tmp_path)
    proc, port = _plain_repl(root, env)
    try:
        config, cfg = site()
        res = deploy(port, config)
        assert res.returncode == 0, res.stdout + res.stderr
        for n in range(1, 8):
            assert f"[{n}/7]" in res.stdout
        assert "modules import; the config validates on the board" in res.stdout
        assert (f"[7/7] reset    not possible: this unix-port REPL has no machine.reset(); it is left at "
                f"its REPL. Start the firmware from {root.resolve()}") in res.stdout
        assert (root / "lib" / "umqtt" / "simple.py").is_file() and (root / "v2g" / "libpath.mpy").is_file()
        assert proc.poll() is None, "the REPL ended: the deploy soft-reset it"
        res = deploy(port, config)
        assert res.returncode == 0, res.stdout + res.stderr
        assert " 0 copied, " in res.stdout
    finally:
        children.end(proc)
    events, lines, rc = run_deployed(root, env)
    assert_firmware_ran(events, lines, rc)
