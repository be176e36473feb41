"""``python -m harness.sandbox {prepare|evaluate|objective} REQUEST.json RESULT.json``: see ``harness.sandbox.entry``."""

from harness.sandbox.entry import main
from harness.trusted.process_lifetime import exit_now

exit_now(main())
