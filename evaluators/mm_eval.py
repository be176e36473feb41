"""OpenEvolve evaluator for the mm framework: `openevolve-run initial_programs/mm.py evaluators/mm_eval.py`.

All the work happens in `harness.trusted.evaluate`; this file only names the framework. Importing it checks
the set-up (profile, device, data) and computes or loads the cached baseline.
"""

from harness.trusted.evaluate import make_evaluator

evaluate = make_evaluator("mm")
