# Board entry point: kept tiny. Nothing has set outputs safe before this
# runs (boot.py only documents why): there is no output pin to force, the
# power stage is commanded over Modbus only, and a setpoint the controller
# stops refreshing (a reboot, a crash) falls back to 0 W by the inverter's
# own 704 reversion timer (WSetRvrtTms and WSetRvrt = 0 W, written with the
# first setpoint after each discovery). The app then starts the watchdog
# (board.watchdog).
# lib/ on sys.path first (a board has /lib there; the unix port does not),
# before anything imports umqtt.
from v2g import libpath

libpath.add(__file__)
from v2g import app

app.main()
