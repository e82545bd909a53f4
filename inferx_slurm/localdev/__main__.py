import sys

from inferx_slurm.localdev.cluster import main

sys.exit(main())
