"""`python -m vitlab` runs the command line (torchrun uses this form)."""

import sys

from vitlab.cli import main

sys.exit(main())
