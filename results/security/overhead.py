"""What the trust boundary costs on a smoke evaluation.

    python results/security/overhead.py --before COMMIT [--repeats 5] [--workers fresh|persistent] [--out FILE]

Evaluates the ttr seed under ``smoke`` through the real evaluator, round-robin over five arms, each with its own
data cache and ledger (its baseline trained once, untimed):
- ``before``: the code at COMMIT (checked out into a temporary worktree), with its confinement;
- ``confined``: this checkout, with the sandbox's namespaces, the trusted scorer and the run-time snapshots;
- ``unconfined``: this checkout with the namespaces switched off (the scorer and the snapshots still run);
- ``no_private_root``: this checkout with every layer but the private root (what the private root costs).
- ``before_exit_now``: the code at COMMIT with one change, the sandbox process ending the way it ends here
  (``process_lifetime.exit_now``: without the interpreter's teardown, about half a second with torch loaded), so
  that what the boundary costs is not hidden by a saving that has nothing to do with it.
With ``--workers fresh`` each evaluation runs in a fresh interpreter that imports its arm's code, so that every
evaluation pays what a process pays once; with ``persistent``, each arm's evaluations run one after another in one
interpreter, as in an OpenEvolve worker process (which stays up and evaluates child after child). Reports
the median wall time of each arm, the overhead of this checkout against ``before`` and against
``before_exit_now`` (the boundary's cost), and the scorer's own times
from the ledger (``execution.scoring``). Needs a machine that can confine (``harness.trusted.confine --check``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Run in the arm's interpreter: evaluate the seed once per line read from standard input (the first evaluation, which
# trains the arm's baseline, is not reported), printing what was measured as one line each.
WORKER = """
import json, sys, time
from harness.trusted import confine
if sys.argv[1] == "unconfined":
    confine.unavailable_reason = lambda device="cpu": "switched off for the comparison"
if sys.argv[1] == "no_private_root":
    offered = confine.offered_layers()
    confine.offered_layers = lambda: (offered[0], offered[1], False)
from harness.trusted.evaluate import evaluate, prepare
from harness.trusted.frameworks import get_framework
fw = get_framework("ttr")
prepare(fw.name)
for line in sys.stdin:
    started = time.perf_counter()
    result = evaluate(fw.name, sys.argv[2])
    wall = time.perf_counter() - started
    execution = result.artifacts.get("execution", "")
    confinement = execution.split("confinement: ", 1)[1].splitlines()[0] if "confinement: " in execution else ""
    print(json.dumps({"wall_s": wall, "reason": result.artifacts["reason"], "score": result.metrics["combined_score"],
                      "confinement": confinement}), flush=True)
"""

# The end of harness/sandbox/__main__.py in the before_exit_now arm: harness.trusted.process_lifetime.exit_now's body.
EXIT_NOW = "code = main()\nsys.stdout.flush()\nsys.stderr.flush()\nimport os\nos._exit(code)"


def _env(arm: str, code_dir: Path, work: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(code_dir), "HARNESS_PROFILE": "smoke",
            "HARNESS_CACHE": str(work / arm / "cache"), "HARNESS_LEDGER": str(work / arm / "ledger.sqlite"),
            "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


def _run(arm: str, code_dir: Path, work: Path, seed: Path) -> dict:
    """One evaluation in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", WORKER, arm, str(seed)], cwd=code_dir, input="go\n",
                         env=_env(arm, code_dir, work), capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        sys.exit(f"{arm}: the evaluation failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


class Worker:
    """One interpreter per arm that evaluates again and again, as an OpenEvolve worker process does (its modules, and
    what they learn once per process, such as the layers this machine allows, stay loaded between evaluations)."""

    def __init__(self, arm: str, code_dir: Path, work: Path, seed: Path):
        self.arm = arm
        self.stderr_path = work / f"{arm}-worker.stderr"
        with open(self.stderr_path, "w") as stderr:
            self.proc = subprocess.Popen([sys.executable, "-c", WORKER, arm, str(seed)], cwd=code_dir,
                                         env=_env(arm, code_dir, work), stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=stderr, text=True)

    def evaluate(self) -> dict:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            sys.exit(f"{self.arm}: the worker stopped:\n{self.stderr_path.read_text()[-3000:]}")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _scoring_times(ledger_path: Path) -> list[dict]:
    import sqlite3

    with sqlite3.connect(ledger_path) as db:
        rows = db.execute("SELECT execution_json FROM evaluations ORDER BY id").fetchall()
    return [json.loads(r[0] or "{}").get("scoring", {}) for r in rows]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, help="the commit to compare against")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "overhead.json"))
    parser.add_argument("--workers", choices=("fresh", "persistent"), default="fresh",
                        help="fresh: every evaluation in a new interpreter; persistent: one interpreter per arm for "
                             "all its evaluations, as OpenEvolve's worker processes")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from harness.trusted import confine

    reason = confine.unavailable_reason("cpu")
    if reason:
        sys.exit(f"this machine cannot confine the sandbox: {reason}")
    work = Path(tempfile.mkdtemp(prefix="harness-overhead-"))
    before_dir, exit_now_dir = work / "before-code", work / "before-exit-now-code"
    for folder in (before_dir, exit_now_dir):
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(folder), args.before],
                       check=True, capture_output=True)
    try:
        main_file = exit_now_dir / "harness" / "sandbox" / "__main__.py"
        if "sys.exit(main())" not in main_file.read_text():
            sys.exit(f"{args.before}: its harness/sandbox/__main__.py does not end with sys.exit(main())")
        main_file.write_text(main_file.read_text().replace("sys.exit(main())", EXIT_NOW))
        seed = work / "seed.py"
        seed.write_text((ROOT / "initial_programs" / "ttr.py").read_text())
        arms = {"before": before_dir, "before_exit_now": exit_now_dir, "confined": ROOT, "unconfined": ROOT,
                "no_private_root": ROOT}
        workers = {}
        for arm, code_dir in arms.items():
            if args.workers == "fresh":
                _run(arm, code_dir, work, seed)  # trains the arm's baseline; its evaluation is not counted
            else:
                workers[arm] = Worker(arm, code_dir, work, seed)
                workers[arm].evaluate()  # the same, in the worker that goes on
        walls: dict[str, list[float]] = {arm: [] for arm in arms}
        outcomes = set()
        for _ in range(args.repeats):
            for arm, code_dir in arms.items():
                measured = _run(arm, code_dir, work, seed) if args.workers == "fresh" else workers[arm].evaluate()
                walls[arm].append(measured["wall_s"])
                outcomes.add((arm, measured["reason"], measured["score"], measured.get("confinement") or ""))
        for worker in workers.values():
            worker.close()
        scoring = [s for arm in ("confined", "unconfined", "no_private_root")
                   for s in _scoring_times(work / arm / "ledger.sqlite") if s]
    finally:
        for folder in (before_dir, exit_now_dir):
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)], capture_output=True)
    medians = {arm: statistics.median(v) for arm, v in walls.items()}
    report = {"what": "ttr seed, smoke profile, evaluate() wall time in seconds, round-robin over the arms",
              "workers": args.workers,
              "before_commit": args.before, "repeats": args.repeats, "walls_s": walls, "median_s": medians,
              "overhead_vs_before_frac": medians["confined"] / medians["before"] - 1,
              "overhead_vs_before_exit_now_frac": medians["confined"] / medians["before_exit_now"] - 1,
              "namespaces_overhead_frac": medians["confined"] / medians["unconfined"] - 1,
              "private_root_overhead_frac": medians["confined"] / medians["no_private_root"] - 1,
              "scorer_forward_s_median": statistics.median(s["forward_s"] for s in scoring),
              "scorer_loss_s_median": statistics.median(s["loss_s"] for s in scoring),
              "scorer_wall_s_median": statistics.median(s["scorer_wall_s"] for s in scoring),
              "outcomes": sorted(outcomes), "measured_at": time.strftime("%Y-%m-%d")}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "walls_s"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
