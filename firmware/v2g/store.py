# Persistence that survives a power cut at any moment.
#
# A small state file is replaced atomically: write a temporary file, then
# rename it over the old one (rename is atomic on littlefs and on Linux), so
# a reader finds either the old or the new content, never a torn mix.
import json
import os


def ensure_dir(path):
    # mkdir -p, for the few levels a store path has
    parts = [p for p in path.split("/") if p]
    cur = "/" if path.startswith("/") else ""
    for p in parts:
        cur = cur + p if cur in ("", "/") else cur + "/" + p
        try:
            os.mkdir(cur)
        except OSError:
            pass


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def atomic_write(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, path)


def read_bytes(path, default=None):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return default


class JsonFile:
    """A small JSON document kept atomically; a corrupt or missing file
    reads as the default (never an exception at boot)."""

    def __init__(self, path, default):
        self.path = path
        self.default = default

    def load(self):
        raw = read_bytes(self.path)
        if raw is None:
            return dict(self.default)
        try:
            doc = json.loads(raw)
        except ValueError:
            return dict(self.default)
        if not isinstance(doc, dict):
            return dict(self.default)
        out = dict(self.default)
        out.update(doc)
        return out

    def save(self, doc):
        atomic_write(self.path, json.dumps(doc).encode())


def open_store(cfg, board):
    """-> this device's state directory, made and claimed (v2g.storedir).
    That code runs once at boot: unloaded after, its RAM is worth more to
    TLS (like v2g.config)."""
    from v2g import storedir, unload

    try:
        return storedir.open_store(cfg, board)
    finally:
        unload("v2g.storedir")
