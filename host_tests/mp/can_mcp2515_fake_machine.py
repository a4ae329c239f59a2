# test_can_mcp2515.py: a stand-in `machine` module with what hal.can_build
# asks of it (Pin, SPI), backed by the MCP2515 model (can_mcp2515_model.py).
# Importing it installs it as `machine`: import it before the HAL. The test
# sets FakeMachine.model (the chip) and FakeMachine.board (the board
# config's "can" section); FakeMachine.made records what was built.
import sys


class FakeMachine:
    # What hal.can_build asks of `machine`, backed by the MCP2515 model.
    made = []
    model = None
    board = None

    class Pin:
        OUT = 1
        IN = 0
        PULL_UP = 2
        IRQ_FALLING = 4

        def __init__(self, pid, mode=None, pull=None, value=None):
            self.pid = pid
            self.args = (mode, pull, value)
            self.irq_args = None
            FakeMachine.made.append(("Pin", pid, mode, pull, value))

        def value(self, v=None):
            m = FakeMachine.model
            c = FakeMachine.board
            if self.pid == c["cs"]:
                return m.cs.value(v)
            if self.pid == c["int"]:
                return m.int_pin.value()
            return 0

        def irq(self, trigger=0, handler=None):
            self.irq_args = (trigger, handler)
            FakeMachine.made.append(("irq", self.pid, trigger))

    class SPI:
        def __init__(self, sid, baudrate=0, polarity=0, phase=0, sck=None, mosi=None, miso=None):
            FakeMachine.made.append(("SPI", sid, baudrate, polarity, phase, sck.pid, mosi.pid, miso.pid))
            self._s = FakeMachine.model.spi

        def write(self, b):
            self._s.write(b)

        def readinto(self, b, w=0):
            self._s.readinto(b, w)


sys.modules["machine"] = FakeMachine
