"""``python -m pfvit_client``: the same as ``pfvit-recognize``."""

import sys

from pfvit_client.cli import main

sys.exit(main())
