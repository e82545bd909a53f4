import sys

from inferx_slurm.localdev.cluster import _main

sys.exit(_main())
