"""``python -m vhostcompat.cli``."""

import sys

from vhostcompat.cli import main

sys.exit(main())
