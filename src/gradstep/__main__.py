"""``python -m gradstep``: the same as the ``gradstep`` command."""

import sys

from .cli import main

sys.exit(main())
