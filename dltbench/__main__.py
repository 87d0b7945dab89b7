"""``python -m dltbench`` is the ``dltbench`` command."""

import sys

from .cli import main

sys.exit(main())
