"""Cross-compile the firmware with mpy-cross, as it ships to a board.

    python -m tools.build_mpy --arch x64 --out build/mpy/x64

Every module under firmware/v2g becomes a .mpy for the arch (viper code
needs one); boot.py and main.py stay source, as a board runs them; the
micropython-lib packages in build/lib (umqtt) are compiled too. Used by the
heap benchmark and the tests that run the shipped form on the unix port.

    python -m tools.build_mpy --arch x64 --romfs build/romfs/x64.img

also packs those .mpy files into a ROMFS image (mpremote's own writer):
v2g/ at its root and umqtt/ under lib/, the layout a board mounts at /rom
with /rom and /rom/lib on sys.path. From a ROMFS the bytecode runs in place
from flash instead of being copied into the heap.
"""
import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MPY_CROSS = ROOT / "build" / "venv" / "bin" / "mpy-cross"


def _source_name(rel):
    # The name tracebacks show: the module's own name ("modbus", "can" for
    # can/__init__.py), which the import interns anyway. A path such as
    # "v2g/modbus.py" would be one more interned string per module, RAM
    # that a board never gets back.
    return rel.parent.name if rel.stem == "__init__" else rel.stem


def compile_tree(src_root, rel_dir, out_root, arch):
    # A module is compiled again when its source's content (not its mtime)
    # differs from what built the .mpy: a checkout of another commit that
    # shares build/ (a git worktree, a bench of the previous version) can
    # leave .mpy files newer than sources they were not made from.
    out = []
    out_root.mkdir(parents=True, exist_ok=True)
    stamp = out_root / ".build-sources.json"
    flags = f"-march={arch} -s <module name>"
    try:
        built = json.loads(stamp.read_text())
    except (OSError, ValueError):
        built = {}
    if built.get("flags") != flags:
        built = {"flags": flags}
    for src in sorted((src_root / rel_dir).rglob("*.py")):
        rel = src.relative_to(src_root)
        dst = out_root / rel.with_suffix(".mpy")
        dst.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(src.read_bytes()).hexdigest()
        if not dst.exists() or built.get(str(rel)) != digest:
            cmd = [str(MPY_CROSS), f"-march={arch}", "-o", str(dst), "-s", _source_name(rel), str(src)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise SystemExit(f"mpy-cross failed on {rel}: {res.stderr.strip()}")
            built[str(rel)] = digest
        out.append(dst)
    # a module whose source is gone must not ship from an old build
    for old in (out_root / rel_dir).rglob("*.mpy"):
        if old not in out:
            old.unlink()
    tmp = stamp.with_name(f"{stamp.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(built, sort_keys=True))
    tmp.replace(stamp)
    return out


def build(arch, out):
    out = Path(out)
    files = compile_tree(ROOT / "firmware", "v2g", out, arch)
    for name in ("boot.py", "main.py", "tech.py"):
        (out / name).write_bytes((ROOT / "firmware" / name).read_bytes())
    lib = ROOT / "build" / "lib"
    if (lib / "umqtt").exists():
        files += compile_tree(lib, "umqtt", out / "lib", arch)
    return files


def pack_image(tree, image):
    """Pack the directory `tree` into the ROMFS image file `image` (written
    whole, then renamed into place) -> its size in bytes."""
    from mpremote.romfs import make_romfs

    with contextlib.redirect_stdout(io.StringIO()):  # it prints the tree
        data = make_romfs(str(tree), mpy_cross=False)
    image = Path(image)
    tmp = image.with_name(image.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(image)
    return len(data)


def romfs(arch, image, out=None):
    """Build the .mpy tree and pack it into a ROMFS image; -> image size."""
    out = Path(out or ROOT / "build" / "mpy" / arch)
    build(arch, out)
    image = Path(image)
    image.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=image.parent) as stage:  # two builds at once stay apart
        stage = Path(stage)
        shutil.copytree(out / "v2g", stage / "v2g")
        if (out / "lib" / "umqtt").exists():
            shutil.copytree(out / "lib" / "umqtt", stage / "lib" / "umqtt")
        return pack_image(stage, image)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="x64")
    p.add_argument("--out", default=None)
    p.add_argument("--romfs", default=None, metavar="IMAGE", help="also pack a ROMFS image")
    a = p.parse_args(argv)
    if a.romfs:
        n = romfs(a.arch, a.romfs, a.out)
        print(f"ROMFS image {a.romfs}: {n} bytes for {a.arch}")
        return 0
    files = build(a.arch, a.out or ROOT / "build" / "mpy" / a.arch)
    print(f"{len(files)} modules compiled for {a.arch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
