"""``python -m harness.scorer PLAN.json RESULT.json``: see ``harness.scorer.score``."""

import sys

from harness.scorer.score import main

sys.exit(main())
