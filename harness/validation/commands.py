"""The ``harness validate`` command line:

    harness validate --program PATH [--program PATH ...] [--framework FW]
    harness validate --run RUN_DIR [--run RUN_DIR ...] [--top-k K]
        [--tuning {optuna,shared}] [--trials N] [--seeds N] [--seed-base S] [--no-ladder]
        [--profile NAME] [--threads T] [--jobs J] [--hard-limit-s S] [--ledger PATH] [--out DIR] [--name NAME]
        [--family-with validation.json ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from harness.trusted import ledger as ledger_mod
from harness.trusted.frameworks import FRAMEWORKS, REPO_ROOT
from harness.trusted.profiles import get_profile
from harness.validation.jobs import Candidate, candidates_from_run, slug
from harness.validation.pipeline import validate
from harness.validation.report import display


def _command_line(args: argparse.Namespace) -> str:
    parts = ["harness validate"]
    for key, value in sorted(vars(args).items()):
        if key in ("func", "command") or value in (None, False, []):
            continue
        flag = "--" + key.replace("_", "-")
        for v in (value if isinstance(value, list) else [value]):
            parts.append(flag if v is True else f"{flag} {display(v) if isinstance(v, str) else v}")
    return " ".join(parts)


def cmd_validate(args: argparse.Namespace) -> int:
    from harness.analysis.runs import framework_of

    if not args.program and not args.run:
        print("harness validate: give --program PATH (with --framework) or --run RUN_DIR", flush=True)
        return 2
    profile = get_profile(args.profile)
    if args.hard_limit_s:
        profile = dataclasses.replace(profile, hard_limit_s=float(args.hard_limit_s))  # operational: not fingerprinted
    ledger_path = Path(args.ledger) if args.ledger else ledger_mod.default_ledger_path()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidates, notes = [], []
    work = Path(args.out or REPO_ROOT / "results" / "validation" / (args.name or f"validate-{stamp}"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "inputs").mkdir(exist_ok=True)
    for p in args.program or []:
        path = Path(p)
        fw = args.framework or framework_of(path.read_text(errors="replace"))
        if fw is None:
            print(f"harness validate: cannot tell the framework of {p}; pass --framework", flush=True)
            return 2
        candidates.append(Candidate(fw, path, f"{fw}-{slug(path.stem)}", str(path)))
    for r in args.run or []:
        found, run_notes = candidates_from_run(Path(r), args.top_k, ledger_path, work / "inputs", args.fingerprint)
        candidates += found
        notes += run_notes
    if not candidates:
        print("harness validate: no candidate to validate" + (f" ({'; '.join(notes)})" if notes else ""), flush=True)
        return 1
    name = args.name or work.name
    result = validate(candidates, profile, work, tuning=args.tuning, trials=args.trials, n_seeds=args.seeds,
                      seed_base=args.seed_base, ladder=not args.no_ladder, threads=args.threads, jobs=args.jobs,
                      ledger_path=ledger_path, job_limit_s=args.job_limit_s,
                      log=lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True),
                      family_with=[Path(p) for p in args.family_with or []], name=name,
                      command=_command_line(args), notes=notes, executor=args.executor)
    for c in result["candidates"]:
        if c.get("refused"):
            print(f"{c['label']}: REFUSED: {c['refused']}")
        else:
            s = c["stats"]
            print(f"{c['label']}: {s['verdict']['level']}: {s['verdict']['text']}")
    print(f"report: {work / 'report.md'}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("validate", help="fair multi-seed statistical comparison of programs with their baseline")
    p.add_argument("--program", action="append", help="a candidate program (repeatable)")
    p.add_argument("--framework", choices=sorted(FRAMEWORKS), help="framework of --program (default: from the class name)")
    p.add_argument("--run", action="append", help="an OpenEvolve output folder: validate its top-k programs (repeatable)")
    p.add_argument("--top-k", type=int, default=3, help="programs per --run (default 3)")
    p.add_argument("--fingerprint", help="with --run: the fingerprint group to take the top-k from (prefix)")
    p.add_argument("--profile", help="smoke | pilot | full (default: $HARNESS_PROFILE or full)")
    p.add_argument("--tuning", choices=["optuna", "shared"], default="optuna",
                   help="optuna: equal trial budget for both; shared: tune the baseline, use its settings for both")
    p.add_argument("--trials", type=int, default=10, help="Optuna trials per tuned side (0 = the profile's defaults)")
    p.add_argument("--seeds", type=int, default=10, help="evaluation seeds per side (default 10)")
    p.add_argument("--seed-base", type=int, default=1, help="first evaluation seed (the tuning seed is the profile's)")
    p.add_argument("--no-ladder", action="store_true", help="train only the objective's rungs (no scaling fit)")
    p.add_argument("--threads", type=int, help="torch intra-op threads in each training job (default: torch's)")
    p.add_argument("--jobs", type=int, default=1,
                   help="training jobs run at once: seeds, and tuning trials in batches (default 1: one after another)")
    p.add_argument("--executor", choices=["local", "ray"],
                   help="where the evaluator and the training jobs run (default: $HARNESS_EXECUTOR or local)")
    p.add_argument("--hard-limit-s", type=float, help="the evaluator's hard limit (operational, not fingerprinted)")
    p.add_argument("--job-limit-s", type=float, help="wall-clock limit of one training job")
    p.add_argument("--ledger", help="ledger file (default: $HARNESS_LEDGER or results/ledger.sqlite)")
    p.add_argument("--out", help="report folder (default: results/validation/<name>/)")
    p.add_argument("--name", help="report name")
    p.add_argument("--family-with", action="append", help="an earlier validation.json whose comparisons join the Holm family")
    p.set_defaults(func=cmd_validate)
