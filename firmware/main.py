# Board entry point: kept tiny. boot.py has already set the outputs safe.
from v2g import app

app.main()
