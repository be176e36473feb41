"""The golden check: a restructuring must change no number.

    python results/golden/golden_check.py --out results/golden/golden-smoke.json     # record
    python results/golden/golden_check.py --compare results/golden/golden-smoke.json # re-run and compare

Runs the real evaluator, on the smoke profile, on the three seeds (each against its own baseline, under both
objectives) and on every candidate of the adversarial corpus (``tests/adversarial.py``), with a fresh data cache
and ledger. It records each one's reason code and every number that is not a time: the score, the losses, the
fitted slope, the gate's ratios. ``--compare`` runs the same again and reports every difference; floats must be
bit-identical (compared by ``repr``). CPU results depend on the processor's instruction set, so compare runs
made on the same machine: record before a change, compare after it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

# A time, a count of seconds, or where it ran: differs between runs by nature, so never compared.
TIME_KEYS = ("eval_wall_s",)
TIME_MARKERS = ("ms_per_step", "_ms", "_s_", "wall", "seconds", "tokens_per_s", "step_time")
TIMEOUT_CASE_LIMIT_S = 20.0  # as in tests/test_evaluator.py: CI does not wait out the smoke profile's limit


def _is_time(key: str) -> bool:
    return key in TIME_KEYS or key.endswith("_s") or any(m in key for m in TIME_MARKERS)


def _numbers(metrics: dict) -> dict:
    return {k: repr(float(v)) for k, v in sorted(metrics.items()) if not _is_time(k)}


def run(log=print, only: str | None = None) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="harness-golden-"))
    os.environ.update({"HARNESS_PROFILE": "smoke", "HARNESS_CACHE": str(tmp / "cache"),
                       "HARNESS_LEDGER": str(tmp / "ledger.sqlite"), "HARNESS_SLOT_DIR": str(tmp / "slots"),
                       "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    for key in ("HARNESS_OBJECTIVE", "HARNESS_DATA", "HARNESS_EXECUTOR"):
        os.environ.pop(key, None)
    import adversarial

    from harness.trusted.evaluate import evaluate
    from harness.trusted.frameworks import FRAMEWORKS
    from harness.trusted.profiles import get_profile

    entries = {}
    jobs = [(f"seed-{fw}-{objective}", fw, FRAMEWORKS[fw].seed_source(), "ok", get_profile(objective=objective))
            for fw in sorted(FRAMEWORKS) for objective in ("final_loss", "scaling_slope")]
    for case in adversarial.CASES:
        profile = get_profile()
        if case.reason == "timeout":
            profile = dataclasses.replace(profile, hard_limit_s=TIMEOUT_CASE_LIMIT_S)
        jobs.append((f"corpus-{case.name}", adversarial.FRAMEWORK, case.source, case.reason, profile))
    for name, framework, source, expected, profile in jobs:
        if only and only not in name:
            continue
        path = tmp / f"{name}.py"
        path.write_text(source)
        started = time.perf_counter()
        result = evaluate(framework, str(path), profile=profile)
        artifacts = getattr(result, "artifacts", {})
        entries[name] = {"expected_reason": expected, "reason": artifacts.get("reason"),
                         "numbers": _numbers(getattr(result, "metrics", result))}
        log(f"{name}: {entries[name]['reason']} (expected {expected}) in {time.perf_counter() - started:.1f} s")
    return {"profile": "smoke", "entries": entries}


def compare(recorded: dict, now: dict) -> list[str]:
    """Every difference between two runs, one line each; empty when they agree."""
    diffs = []
    for name in sorted(set(recorded["entries"]) | set(now["entries"])):
        a, b = recorded["entries"].get(name), now["entries"].get(name)
        if a is None or b is None:
            diffs.append(f"{name}: only in {'the new run' if a is None else 'the record'}")
            continue
        if a["reason"] != b["reason"]:
            diffs.append(f"{name}: reason {a['reason']} -> {b['reason']}")
        for key in sorted(set(a["numbers"]) | set(b["numbers"])):
            if a["numbers"].get(key) != b["numbers"].get(key):
                diffs.append(f"{name}: {key} {a['numbers'].get(key)} -> {b['numbers'].get(key)}")
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", help="record the run here (JSON)")
    group.add_argument("--compare", help="re-run and compare with this record")
    parser.add_argument("--only", help="run only the evaluations whose name contains this (with --compare: the "
                                       "others are reported missing)")
    args = parser.parse_args(argv)
    now = run(only=args.only)
    wrong = [f"{n}: {e['reason']} (expected {e['expected_reason']})" for n, e in now["entries"].items()
             if e["reason"] != e["expected_reason"]]
    if args.out:
        Path(args.out).write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
        print(f"wrote {args.out}: {len(now['entries'])} evaluations, {len(wrong)} with an unexpected reason")
        for line in wrong:
            print("  " + line)
        return 1 if wrong else 0
    diffs = compare(json.loads(Path(args.compare).read_text()), now)
    print(f"{len(now['entries'])} evaluations compared with {args.compare}: {len(diffs)} difference(s)")
    for line in diffs:
        print("  " + line)
    return 1 if diffs or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
