import sys

from .cluster import _main

sys.exit(_main())
