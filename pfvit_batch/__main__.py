"""``python -m pfvit_batch``: the same as ``pfvit-batch``."""

import sys

from pfvit_batch.cli import main

sys.exit(main())
