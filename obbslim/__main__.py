"""`python -m obbslim ...`, also the entry point for `torchrun -m obbslim train ...`."""

import sys

from obbslim.cli import main

if __name__ == "__main__":
    sys.exit(main())
