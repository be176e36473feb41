"""``python -m harness.scorer PLAN.json RESULT.json``: see ``harness.scorer.score``."""

from harness.scorer.score import main
from harness.trusted.process_lifetime import exit_now

exit_now(main())
