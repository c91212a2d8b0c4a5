"""``python -m medverl`` is the ``medverl`` command."""

import sys

from medverl.cli import main

sys.exit(main())
