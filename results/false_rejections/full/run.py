"""The legitimate corpus (``tests/legitimate.py``) through the whole dynamic gate under a profile's geometry, on the CPU:

    python results/false_rejections/full/run.py [PROFILE] > out.jsonl      # default: full

One JSON record per case: accepted (with its FLOP and step-time ratios, the highest at any attention width) or
rejected (reason and message), and the seconds it took. ``tests/test_legitimate.py`` runs the corpus under smoke in
the suite; this is the same corpus at the users' sizes, where the budget checks run at each of the ladder's widths.
On the CPU the step time is CPU time; ``full`` trains on a GPU, where a step's time is another matter.
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))

from harness.sandbox.checks import GateFailure, run_gate  # noqa: E402
from harness.sandbox.loader import load_attention  # noqa: E402
from harness.trusted.profiles import get_profile  # noqa: E402
from test_legitimate import CASES, baseline, candidate_program  # noqa: E402

profile = get_profile(sys.argv[1] if len(sys.argv) > 1 else "full")
for case in CASES:
    started = time.time()
    cls = load_attention(candidate_program(case), f"<{case.name}>")
    try:
        metrics, _ = run_gate(cls, baseline(case.framework), profile, "cpu")
        record = {"name": case.name, "verdict": "accepted", "flop_ratio": round(metrics["flop_ratio"], 3),
                  "step_time_ratio": round(metrics["step_time_ratio"], 2)}
    except GateFailure as exc:
        record = {"name": case.name, "verdict": "rejected", "reason": exc.reason.value, "message": exc.message}
    record["seconds"] = round(time.time() - started, 1)
    print(json.dumps(record), flush=True)
