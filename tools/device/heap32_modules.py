# `make bench heap32` (tools/bench_heap32.py): heap bytes in use after a
# collection once every module in ARGS (the ones the application loads at
# start) is imported, on the 64-bit unix port and on the 32-bit WebAssembly
# port alike. Prints one "RESULT {json}" line.
#
#     micropython tools/device/heap32_modules.py MODULE...
try:
    ARGS
except NameError:  # run on its own
    import sys
    ARGS = sys.argv[1:]
import gc, sys, json
import _thread, socket, select, array, hashlib, binascii, time, io, errno, struct, os
try:
    import usocket, ustruct, ubinascii
except ImportError:
    pass
gc.collect()
base = gc.mem_alloc()
for name in ARGS:
    __import__(name)
gc.collect()
print('RESULT ' + json.dumps({'code': gc.mem_alloc() - base}))
