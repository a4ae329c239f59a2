# Store-and-forward telemetry outbox on flash.
#
# Append-only file of JSON lines, one record each, in seq order, plus a small
# meta file (replaced atomically) holding the last acknowledged seq, the next
# seq to hand out and the count of records dropped when full. A record leaves
# only when the broker acknowledged it (PUBACK) and ack() moved past it.
#
# Why this survives `kill -9` at any moment:
#  - seq is assigned at append time and the next seq is derived at boot from
#    max(seq in the file, meta) + 1, so a seq that reached the file (and so
#    may have been published) is never handed out again;
#  - a torn last line (killed mid-append) was never published, and is cut
#    off at boot;
#  - acks are saved after publishing, so a crash in between re-sends the
#    same record with the same seq (at-least-once; the cloud dedups by seq);
#  - compaction writes the unacked tail to a temporary file and renames it
#    over the log, after saving `next` in the meta file.
# Only a cursor (file offset of the oldest unacked record) is kept in RAM,
# so thousands of records cost no heap.
import json
import os

from v2g.store import JsonFile, ensure_dir

_CHUNK = const(512)


class Outbox:
    def __init__(self, dirpath, max_records):
        ensure_dir(dirpath)
        self.path = dirpath + "/outbox.jsonl"
        self.max_records = max_records
        self.meta = JsonFile(dirpath + "/outbox.meta", {"acked": 0, "next": 1, "dropped": 0})
        m = self.meta.load()
        self.acked = m["acked"]
        self.dropped = m["dropped"]
        self.next_seq = max(m["next"], self.acked + 1)
        self.dropped_unreported = 0
        self._meta_dirty = False
        # compaction's copy buffer, made once at boot: late in a day the
        # heap may have no free 512-byte block left
        self._copy_buf = bytearray(_CHUNK)
        self._recover()

    # --- boot

    def _recover(self):
        """Scan the log: find the cursor, the count, the highest seq; cut a
        torn tail."""
        self.cursor = None
        self._head = None
        self.pending = 0
        good_end = 0
        pos = 0
        max_seq = 0
        try:
            f = open(self.path, "rb")
        except OSError:
            self.size = 0
            self.cursor = 0
            return
        with f:
            while True:
                line = f.readline()
                if not line:
                    break
                end = pos + len(line)
                seq = _seq_of(line) if line.endswith(b"\n") else None
                if seq is None:
                    break  # torn or corrupt: everything from here is cut
                good_end = end
                if seq > max_seq:
                    max_seq = seq
                if seq > self.acked:
                    if self.cursor is None:
                        self.cursor = pos
                    self.pending += 1
                pos = end
            f.seek(0, 2)
            size = f.tell()
        if self.cursor is None:
            self.cursor = good_end
        self.next_seq = max(self.next_seq, max_seq + 1)
        self.size = good_end
        if size != good_end:
            self._rewrite_from(self.cursor if self.cursor < good_end else good_end, good_end)

    # --- producer

    def append(self, record):
        """Give the record the next seq and append it. Returns the seq."""
        seq = self.next_seq
        record["seq"] = seq
        line = json.dumps(record).encode() + b"\n"
        with open(self.path, "ab") as f:
            f.write(line)
        self.next_seq = seq + 1
        self.size += len(line)
        self.pending += 1
        while self.pending > self.max_records:
            self._drop_oldest()
        return seq

    def _drop_oldest(self):
        line = self._line_at(self.cursor)
        if line is None:
            self.pending = 0
            return
        self.cursor += len(line)
        self.pending -= 1
        self.acked = _seq_of(line) or self.acked
        self.dropped += 1
        self.dropped_unreported += 1
        self._meta_dirty = True

    # --- consumer

    def peek(self):
        """(seq, line bytes without newline) of the oldest unacked record, or None."""
        if self.pending <= 0:
            return None
        h = self._head_record()
        return None if h is None else (h[1], h[2][:-1])

    def _head_record(self):
        # (cursor, seq, line) of the record at the cursor, read once for
        # its peek and its ack: each read opens the file and parses JSON
        h = self._head
        if h is None or h[0] != self.cursor:
            line = self._line_at(self.cursor)
            h = self._head = None if line is None else (self.cursor, _seq_of(line), line)
        return h

    def ack(self, seq):
        """The broker acknowledged seq: move past it (in order)."""
        h = self._head_record()
        if h is None or h[1] != seq:
            return False
        line = h[2]
        self.cursor += len(line)
        self.pending -= 1
        self.acked = seq
        self._meta_dirty = True
        return True

    def flush(self):
        """Persist acks; compact the log when mostly acknowledged."""
        if self._meta_dirty:
            self._save_meta()
        if self.cursor > 4096 and self.cursor * 2 > self.size:
            self._rewrite_from(self.cursor, self.size)

    def take_drop_report(self):
        n = self.dropped_unreported
        self.dropped_unreported = 0
        return n

    # --- internals

    def _save_meta(self):
        self.meta.save({"acked": self.acked, "next": self.next_seq, "dropped": self.dropped})
        self._meta_dirty = False

    def _line_at(self, pos):
        try:
            with open(self.path, "rb") as f:
                f.seek(pos)
                line = f.readline()
        except OSError:
            return None
        return line if line.endswith(b"\n") else None

    def _rewrite_from(self, start, end):
        # `next` first: once acked lines are gone from the log, the meta
        # file is the only memory of the seqs they used.
        self._save_meta()
        tmp = self.path + ".tmp"
        with open(self.path, "rb") as src, open(tmp, "wb") as dst:
            src.seek(start)
            left = end - start
            buf = self._copy_buf
            while left > 0:
                n = src.readinto(buf)
                if not n:
                    break
                n = min(n, left)
                dst.write(memoryview(buf)[:n])
                left -= n
        os.rename(tmp, self.path)
        self.size = end - start
        self.cursor = 0
        self._head = None


def _seq_of(line):
    # records are written by json.dumps: parse rather than guess the layout
    try:
        rec = json.loads(line)
        seq = rec["seq"]
    except (ValueError, KeyError, TypeError):
        return None
    return seq if isinstance(seq, int) else None
