import sys

from lowrank_precond.cli import main

sys.exit(main())
