# test_kernel.py's MicroPython half: the viper kernel itself (host_tests/mp/cases.py).
import gc
import json

import cases
import micropython
from v2g import kernel as K


def ticks(path):
    # PATH: a JSON list of [inputs by slot name, start setpoint]; one tick
    # each from a new state -> [[SP_W, TARGET_W, DROOP_W], ...]
    out = []
    for inp, sp in json.loads(open(path).read()):
        s = K.new_state()
        for name, v in inp.items():
            s[getattr(K, name)] = v
        s[K.SP_W] = sp
        r = K.tick(s)
        assert r == s[K.SP_W]
        out.append([s[K.SP_W], s[K.TARGET_W], s[K.DROOP_W]])
    return out


def no_allocation():
    # bytes allocated by 20,000 ticks under heap_lock (printed)
    s = K.new_state()
    s[K.LO_W] = -7000
    s[K.HI_W] = 7000
    s[K.RAMP_W] = 40
    s[K.NOM_MHZ] = 50000
    s[K.DB_MHZ] = 200
    s[K.K_W_PER_HZ] = 2800
    s[K.FREQ_EN] = 1

    def run(n):
        i = 0
        while i < n:
            s[K.REQ_W] = 7000 if (i // 500) % 2 else -7000
            s[K.HZ_MHZ] = 49000 + (i % 2000)
            K.tick(s)
            i += 1

    run(10)
    gc.collect()
    before = gc.mem_alloc()
    micropython.heap_lock()
    run(20000)
    micropython.heap_unlock()
    print(gc.mem_alloc() - before)


cases.main(globals())
