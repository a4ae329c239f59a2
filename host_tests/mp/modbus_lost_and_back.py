# test_modbus.py: the Modbus master polling the pymodbus server on PORT while
# the test kills it and starts a new one on the same port. Prints "up V",
# then "lost CAUSE", then "recovered V0 V1 CONNECTS" (or "gave up STATE"
# after 30 s).
#
#     micropython host_tests/mp/modbus_lost_and_back.py PORT UNIT
import sys
import time

from v2g import modbus as M
from v2g.hal.tcpstream import TcpStream

stream = TcpStream('127.0.0.1', int(sys.argv[1]), connect_timeout_ms=200)
m = M.RtuMaster(stream, int(sys.argv[2]), timeout_ms=200, retries=2)
print('up', m.read_holding(0, 1)[1])
state = 'up'
end_ms = time.ticks_add(time.ticks_ms(), 30000)
while time.ticks_diff(end_ms, time.ticks_ms()) > 0:
    try:
        v = m.read_holding(0, 2)
        if state == 'lost':
            print('recovered', v[1], v[3], stream.connects)
            break
    except M.LinkLost as e:
        if state == 'up':
            print('lost', type(e.cause).__name__)
            state = 'lost'
    time.sleep_ms(10)
else:
    print('gave up', state)
