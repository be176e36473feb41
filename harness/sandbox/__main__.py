"""``python -m harness.sandbox {prepare|evaluate|objective} REQUEST.json RESULT.json``: see ``harness.sandbox.entry``."""

import sys

from harness.sandbox.entry import main

sys.exit(main())
