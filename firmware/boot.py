# Runs first on a board. The power stage is commanded over Modbus only, and
# the inverter's own reversion timer brings it to 0 W when the controller is
# silent, so there is no output pin to force here. Keep this file minimal:
# an exception in boot.py leaves the board at the REPL.
