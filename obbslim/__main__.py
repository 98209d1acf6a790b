import sys

from obbslim.cli import main

sys.exit(main())
