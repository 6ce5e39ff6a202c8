"""`python -m aetk ...` (and `torchrun ... -m aetk ...`): the command line."""

import sys

from aetk.cli import main

sys.exit(main())
