# test_modbus.py: a scripted stream for v2g.modbus.RtuMaster, and a runner
# that turns every outcome of one master call into a dict (JSON-ready), so
# each test states its intent in plain Python on the host side.
import time

from v2g import modbus as M


class Script:
    # Each write() queues the next canned reply (b'' = silence); readinto hands
    # out `chunk` bytes at a time (0 = all that is queued).
    def __init__(self, replies, chunk=0):
        self.replies = list(replies)
        self.chunk = chunk
        self.written = []
        self.pending = b''

    def write(self, buf):
        self.written.append(bytes(buf).hex())
        self.pending = self.replies.pop(0) if self.replies else b''
        return len(buf)

    def readinto(self, mv):
        n = min(len(mv), len(self.pending))
        if self.chunk:
            n = min(n, self.chunk)
        mv[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n

    def wait(self, timeout_ms):
        if self.pending:
            return True
        time.sleep_ms(timeout_ms)
        return False

    def discard(self):
        self.pending = b''


def arg(a):
    return bytes.fromhex(a["hex"]) if isinstance(a, dict) else a


def run_case(c):
    # c: {"unit", "call", "args", "replies" (hex), optional "chunk",
    # "timeout_ms", "retries", "baud"} -> what happened
    s = Script([bytes.fromhex(h) for h in c["replies"]], c.get("chunk", 0))
    m = M.RtuMaster(s, c["unit"], timeout_ms=c.get("timeout_ms", 30), retries=c.get("retries", 2),
                    baud=c.get("baud"))
    out = {"ok": False}
    try:
        r = getattr(m, c["call"])(*[arg(a) for a in c["args"]])
        out = {"ok": True, "data": bytes(r).hex() if r is not None else None}
    except M.LinkLost as e:
        out["err"] = "LinkLost"
        out["cause"] = type(e.cause).__name__
        out["text"] = str(e.cause)
        if isinstance(e.cause, M.ModbusExceptionResponse):
            out["code"] = e.cause.code
    except M.ModbusExceptionResponse as e:
        out.update(err="ModbusExceptionResponse", fc=e.fc, code=e.code, name=e.name)
    except M.ModbusError as e:
        out.update(err=type(e).__name__, text=str(e))
    except ValueError as e:
        out.update(err="ValueError", text=str(e))
    out["written"] = s.written
    for k in ("transactions", "tx_bytes", "rx_bytes", "errors", "exceptions", "retries_used", "last_error"):
        out[k] = getattr(m, k)
    return out
