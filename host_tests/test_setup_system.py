"""tools/setup_system.sh, which `make test` runs first: on a machine without
Mosquitto, socat or openssl it installs them with apt-get when root, and
otherwise says in one line what to install. Run with a PATH of stand-ins
only: a recording apt-get (the real one never runs here), an `id` that says
root or not, and whichever tools the case has."""
import os
import shutil
import subprocess

import pytest

from conftest import ROOT

SCRIPT = ROOT / "tools" / "setup_system.sh"
BASH = shutil.which("bash")


def run(tmp_path, uid, have=(), apt=True):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    calls = tmp_path / "apt-calls"
    stubs = {"id": f'[ "$1" = -u ] && echo {uid}', **{name: "exit 0" for name in have}}
    if apt:
        stubs["apt-get"] = f'echo "DEBIAN_FRONTEND=$DEBIAN_FRONTEND $*" >> {calls}'
    for name, body in stubs.items():
        (bin_ / name).write_text(f"#!{BASH}\n{body}\n")
        (bin_ / name).chmod(0o755)
    env = {"PATH": str(bin_), "V2G_SBIN": str(tmp_path / "sbin")}  # no /usr/sbin either
    res = subprocess.run([BASH, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    return res, calls.read_text().splitlines() if calls.exists() else []


def test_root_installs_the_missing_ones_with_apt_get(tmp_path):
    res, calls = run(tmp_path, 0, have=["openssl"])
    assert res.returncode == 0, res.stderr
    assert calls == ["DEBIAN_FRONTEND=noninteractive update -qq",
                     "DEBIAN_FRONTEND=noninteractive install -y -qq --no-install-recommends mosquitto socat"]
    assert "mosquitto socat" in res.stdout and res.stderr == ""


@pytest.mark.parametrize("case", ["not root", "root without apt-get"])
def test_otherwise_one_line_says_what_to_install(tmp_path, case):
    res, calls = run(tmp_path, 1000 if case == "not root" else 0, have=["openssl"], apt=case == "not root")
    assert res.returncode != 0
    assert calls == []
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].endswith("sudo apt-get install mosquitto socat"), res.stderr


@pytest.mark.parametrize("uid", [0, 1000])
def test_nothing_to_do_when_everything_is_there(tmp_path, uid):
    res, calls = run(tmp_path, uid, have=["mosquitto", "socat", "openssl"])
    assert (res.returncode, res.stdout, res.stderr, calls) == (0, "", "", [])


def test_mosquitto_in_sbin_counts(tmp_path):
    """Debian puts mosquitto in /usr/sbin, which a user's PATH lacks."""
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    (sbin / "mosquitto").write_text(f"#!{BASH}\nexit 0\n")
    (sbin / "mosquitto").chmod(0o755)
    res, calls = run(tmp_path, 1000, have=["socat", "openssl"])
    assert (res.returncode, res.stderr, calls) == (0, "", [])
