"""Time the constraint gate for the three seeds at the largest rung of a profile, on the CPU.

    python results/bench/gate_timing.py [--profile full] [--repeats 3] [--compare OLD_CHECKS.py]

Runs ``harness.sandbox.checks.run_gate(cls, cls, profile, "cpu")`` for each seed (``cls`` against itself, as the
sandbox runs a pristine seed) ``--repeats`` times and prints a markdown table of the median seconds per check
and in total, with the machine's 1-minute load average while it ran. ``--compare`` also times another version
of checks.py (e.g. ``git show HEAD:harness/sandbox/checks.py > /tmp/checks_old.py``), interleaved with this one run by
run, so that both see the same load.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time


def _load_checks(path: str | None):
    if not path:
        from harness.sandbox import checks

        return checks
    name = f"checks_{abs(hash(path))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="full")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare", help="path of another checks.py, timed interleaved with harness/sandbox/checks.py")
    parser.add_argument("--frameworks", nargs="*", default=["cd", "ttr", "mm"])
    args = parser.parse_args()

    import torch

    from harness.trusted.frameworks import FRAMEWORKS
    from harness.trusted.profiles import get_profile
    from harness.sandbox.loader import load_attention

    versions = {"harness/sandbox/checks.py": _load_checks(None)}
    if args.compare:
        versions[args.compare] = _load_checks(args.compare)
    profile = get_profile(args.profile)
    classes = {fw: load_attention(FRAMEWORKS[fw].seed_source(), str(FRAMEWORKS[fw].seed_path)) for fw in args.frameworks}
    first = classes[args.frameworks[0]]
    for checks in versions.values():
        checks.run_gate(first, first, profile, "cpu")  # imports and first-call costs stay out of the numbers
    per = {(v, fw): [] for v in versions for fw in classes}
    loads = []
    for _ in range(args.repeats):
        for fw, cls in classes.items():
            for version, checks in versions.items():
                start = time.perf_counter()
                _, timings = checks.run_gate(cls, cls, profile, "cpu")
                timings["total"] = time.perf_counter() - start
                per[(version, fw)].append(timings)
                loads.append(os.getloadavg()[0])
    print(f"Constraint gate, profile `{args.profile}` (largest rung {max(profile.ladder)}), on the CPU: "
          f"{os.cpu_count()} cores, torch {torch.__version__}; seconds, median of {args.repeats} runs per seed; "
          f"1-minute load average {min(loads):.1f}-{max(loads):.1f} while it ran.")
    print()
    columns = [(v, fw) for v in versions for fw in classes]
    label = (lambda v, fw: f"{fw}, before" if v != "harness/sandbox/checks.py" else fw) if args.compare else (lambda v, fw: fw)
    print("| check | " + " | ".join(f"{label(v, fw)} (s)" for v, fw in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name in per[columns[0]][0]:
        cells = [f"{statistics.median(t[name] for t in per[c]):.2f}" for c in columns]
        if name == "total":
            print("| **total** | " + " | ".join(f"**{c}**" for c in cells) + " |")
        else:
            print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
