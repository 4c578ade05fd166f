"""``python -m semimech``: the same command line as ``semimech``."""

import sys

from semimech.cli import main

sys.exit(main())
