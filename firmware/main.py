# Board entry point: kept tiny. boot.py has already set the outputs safe.
# lib/ on sys.path first (a board has /lib there; the unix port does not),
# before anything imports umqtt.
from v2g import libpath

libpath.add(__file__)
from v2g import app

app.main()
