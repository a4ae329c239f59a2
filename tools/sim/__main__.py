import sys

from .day import main

sys.exit(main())
