"""What the sandbox's confinement costs on a smoke evaluation.

    python results/security/overhead.py [--repeats 5] [--out results/security/overhead.json]

Evaluates the ttr seed under ``smoke`` through the real evaluator, alternating a confined sandbox (user, network
and PID namespaces) and an unconfined one, with a fresh data cache and ledger, and reports the median wall time
of each and the static policy's time per candidate. Needs a machine that can confine (see
``harness.trusted.confine --check``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "overhead.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="harness-overhead-"))
    os.environ.update({"HARNESS_PROFILE": "smoke", "HARNESS_CACHE": str(work / "cache"),
                       "HARNESS_LEDGER": str(work / "ledger.sqlite"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    from harness.trusted import confine, program
    from harness.trusted.evaluate import evaluate, prepare
    from harness.trusted.frameworks import ATTENTION_KWARGS, get_framework
    from harness.trusted.policy import check_block, module_aliases

    reason = confine.unavailable_reason("cpu")
    if reason:
        sys.exit(f"this machine cannot confine the sandbox: {reason}")
    fw = get_framework("ttr")
    seed = work / "seed.py"
    seed.write_text(fw.seed_source())
    prepare(fw.name)
    walls: dict[str, list[float]] = {"confined": [], "unconfined": []}
    scores = set()
    for _ in range(args.repeats):
        for kind in walls:
            confine.unavailable_reason = (lambda device="cpu": "switched off for the comparison") \
                if kind == "unconfined" else (lambda device="cpu": None)
            started = time.perf_counter()
            result = evaluate(fw.name, str(seed))
            walls[kind].append(time.perf_counter() - started)
            assert result.artifacts["reason"] == "ok", result.artifacts
            assert (kind == "confined") == (confine.LAYERS in result.artifacts["execution"])
            scores.add(result.metrics["combined_score"])
    parts = program.split(fw.seed_source())
    started = time.perf_counter()
    for _ in range(50):
        check_block(parts.block, fw.class_name, ATTENTION_KWARGS, module_aliases(parts.head))
    static_ms = (time.perf_counter() - started) / 50 * 1e3
    medians = {k: statistics.median(v) for k, v in walls.items()}
    report = {"what": "ttr seed, smoke profile, evaluate() wall time in seconds, alternating",
              "repeats": args.repeats, "walls_s": walls, "median_s": medians,
              "confinement_overhead_frac": medians["confined"] / medians["unconfined"] - 1,
              "static_policy_ms_per_candidate": static_ms, "scores": sorted(scores)}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "walls_s"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
