# The inverter of tests that need a controller but no link: never
# discovered, so the controller still ticks, plans, samples telemetry and
# checks and queues commands (test_commands, test_clock_trust).
from v2g.modbus import ModbusError


class DeadInverter:
    ready = False
    inverter_droop = False
    last_wset = None
    models = {}

    def discover(self):
        raise ModbusError("no answer")
