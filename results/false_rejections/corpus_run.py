"""Run the legitimate corpus (``tests/legitimate.py``) through the static policy and the dynamic gate of the harness
in another checkout, to compare versions of the gate on the same mechanisms:

    git worktree add /tmp/before <commit>
    python results/false_rejections/corpus_run.py /tmp/before > before.json
    python results/false_rejections/corpus_run.py . > after.json

Prints one JSON record per case: accepted with the measured FLOP ratio and the gate's seconds, or the rejection's
reason and message. Uses only what older versions also have (``check_block``, ``load_attention``, ``run_gate``).
"""

import json
import sys
import time
from pathlib import Path

checkout = Path(sys.argv[1]).resolve()
sys.path.insert(0, str(checkout))
sys.path.insert(1, str(Path(__file__).resolve().parents[2] / "tests"))  # the corpus of this checkout

import harness  # noqa: E402
from harness.sandbox.checks import GateFailure, run_gate  # noqa: E402
from harness.sandbox.loader import load_attention  # noqa: E402
from harness.trusted import program  # noqa: E402
from harness.trusted.frameworks import ATTENTION_KWARGS, FRAMEWORKS  # noqa: E402
from harness.trusted.policy import check_block, module_aliases  # noqa: E402
from harness.trusted.profiles import get_profile  # noqa: E402
from legitimate import CASES  # noqa: E402

assert Path(harness.__file__).resolve().is_relative_to(checkout), harness.__file__
profile = get_profile("smoke")
records = []
for case in CASES:
    fw = FRAMEWORKS[case.framework]
    seed = fw.seed_source()
    parts = program.split(seed)
    spliced = program.splice(seed, parts.head + case.block.lstrip("\n") + parts.tail)
    block = program.split(spliced)
    started = time.time()
    report = check_block(block.block, fw.class_name, ATTENTION_KWARGS, module_aliases(block.head))
    if not report.ok:
        records.append({"case": case.name, "result": "policy: " + "; ".join(report.violations)[:300]})
        continue
    try:
        metrics, _ = run_gate(load_attention(spliced, case.name), load_attention(seed, "seed"), profile, "cpu")
        records.append({"case": case.name, "result": "accepted", "flop_ratio": metrics.get("flop_ratio"),
                        "gate_s": round(time.time() - started, 1)})
    except GateFailure as failure:
        records.append({"case": case.name, "result": f"{failure.reason.value}: {failure.message}"[:300]})
print(json.dumps(records, indent=1))
