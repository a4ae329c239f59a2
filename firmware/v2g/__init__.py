# V2G charger-controller firmware (MicroPython). See README.md.
VERSION = "0.1.0"
