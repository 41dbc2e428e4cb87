"""``python -m sslbench``: the same as the ``sslbench`` command."""

import sys

from sslbench.cli import main

sys.exit(main())
