# test_outbox.py's MicroPython half: v2g.outbox.Outbox in a directory D
# (host_tests/mp/cases.py); each case restarts it as a reboot would.
import json
import os

import cases
from v2g.outbox import Outbox


def append_peek_ack_and_restart(d):
    o = Outbox(d, 100)
    seqs = [o.append({"v": i}) for i in range(5)]
    head = o.peek()
    o.ack(head[0])
    o.ack(2)
    o.flush()
    o2 = Outbox(d, 100)          # a reboot
    return [seqs, head[0], json.loads(head[1])["v"], o2.peek()[0], o2.pending, o2.append({"v": 9})]


def unflushed_acks(d):
    o = Outbox(d, 100)
    for i in range(3):
        o.append({"v": i})
    o.ack(1)                      # acked in RAM, not flushed: a crash now
    o2 = Outbox(d, 100)
    return [o2.peek()[0], o2.pending]


def torn_tail(d):
    o = Outbox(d, 100)
    for i in range(3):
        o.append({"v": i})
    with open(d + "/outbox.jsonl", "ab") as f:
        f.write(b'{"v": 3, "se')       # killed in the middle of an append
    o2 = Outbox(d, 100)
    return [o2.pending, o2.append({"v": 4}), open(d + "/outbox.jsonl").read().count("\n")]


def full_drops_oldest(d):
    # two lines: before and after a reboot
    o = Outbox(d, 10)
    for i in range(25):
        o.append({"v": i})
    print(json.dumps([o.pending, o.peek()[0], o.take_drop_report(), o.take_drop_report(), o.dropped]))
    o.flush()
    o2 = Outbox(d, 10)
    print(json.dumps([o2.pending, o2.peek()[0], o2.dropped]))


def compaction(d):
    o = Outbox(d, 1000)
    for i in range(200):
        o.append({"v": i, "pad": "x" * 40})
    for s in range(1, 181):
        o.ack(s)
    o.flush()                     # most is acked: the log is rewritten
    size = os.stat(d + "/outbox.jsonl")[6]
    o2 = Outbox(d, 1000)
    return [size < 2000, o2.pending, o2.peek()[0], o2.append({"v": 0})]


cases.main(globals())
