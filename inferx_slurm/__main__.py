import sys

from inferx_slurm.cli import main

sys.exit(main())
