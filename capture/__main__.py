"""``python -m capture`` is ``mlink-capture``."""

import sys

from capture.cli import main

sys.exit(main())
