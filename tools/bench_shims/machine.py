# Bench-only stand-in for `machine` on the unix port (on MICROPYPATH only while
# tools/bench_modbus.py runs micropython-modbus). micropython-modbus's RTU class
# constructs machine.UART(...) itself, so this UART carries the bytes over a TCP
# socket to the same pymodbus RTU-over-TCP server our own master talks to.
#
# It behaves like a hardware UART as cheaply as a socket allows: any() asks the
# kernel once (non-blocking recv) and buffers; read() hands the buffer over.
import socket

_target = None  # (host, port); set by the bench before the UART is built


def set_target(host, port):
    global _target
    _target = (host, port)


class Pin:
    OUT = 1
    IN = 0

    def __init__(self, pin_id, mode=IN, *args, **kwargs):
        self._value = 0

    def value(self, v=None):
        if v is None:
            return self._value
        self._value = 1 if v else 0

    def on(self):
        self._value = 1

    def off(self):
        self._value = 0


class UART:
    def __init__(self, uart_id, baudrate=9600, *args, **kwargs):
        if _target is None:
            raise OSError("bench shim: call machine.set_target() first")
        ai = socket.getaddrinfo(_target[0], _target[1], 0, socket.SOCK_STREAM)[0]
        self._sock = socket.socket(ai[0], socket.SOCK_STREAM)
        self._sock.connect(ai[-1])
        self._sock.setblocking(False)
        self._rx = b""

    def _pull(self):
        try:
            data = self._sock.recv(512)
        except OSError:  # EAGAIN: nothing queued
            return
        if data:
            self._rx += data

    def any(self):
        self._pull()
        return len(self._rx)

    def read(self, nbytes=None):
        if not self._rx:
            self._pull()
        if not self._rx:
            return None
        if nbytes is None or nbytes >= len(self._rx):
            data = self._rx
            self._rx = b""
        else:
            data = self._rx[:nbytes]
            self._rx = self._rx[nbytes:]
        return data

    def write(self, buf):
        return self._sock.send(buf)

    def flush(self):
        pass  # the socket send has already handed the bytes to the kernel

    def deinit(self):
        self._sock.close()
