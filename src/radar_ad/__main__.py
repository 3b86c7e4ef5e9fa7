"""``python -m radar_ad`` is the ``radar`` command."""

import sys

from .apps.cli import main

sys.exit(main())
