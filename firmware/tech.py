# At the REPL:  import tech; tech.status()   (help: see README "For technicians")
from v2g.tech import (  # noqa: F401
    clear_fault, cloud, config, factory_reset, faults, pause, read, restart, resume, selftest, status)
