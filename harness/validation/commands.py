"""The ``harness validate`` command line:

    harness validate --program PATH [--program PATH ...] [--framework FW]
    harness validate --run RUN_DIR [--run RUN_DIR ...] [--top-k K]
        [--tuning {optuna,shared}] [--trials N] [--seeds N] [--seed-base S] [--no-ladder]
        [--profile NAME] [--threads T] [--jobs J] [--hard-limit-s S] [--ledger PATH] [--out DIR] [--name NAME]
        [--family-with validation.json ...]
    harness validate --interpret REPORT_DIR LABEL TEXT

The defaults are the users' design (``harness.validation.protocol``): seeds 42..51, 100 trials per tuned side.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from harness.trusted import ledger as ledger_mod
from harness.trusted.frameworks import FRAMEWORKS, REPO_ROOT
from harness.trusted.profiles import ConfigError, get_profile
from harness.validation.jobs import Candidate, candidates_from_run, slug
from harness.validation import protocol
from harness.validation.pipeline import interpret, validate
from harness.validation.report import display


def command_line(args: argparse.Namespace, name: str = "validate") -> str:
    """The command as given, its paths as a reader can use them (for the reports)."""
    parts = [f"harness {name}"]
    for key, value in sorted(vars(args).items()):
        if key in ("func", "command") or value in (None, False, []):
            continue
        flag = "--" + key.replace("_", "-")
        for v in (value if isinstance(value, list) else [value]):
            parts.append(flag if v is True else f"{flag} {display(v) if isinstance(v, str) else v}")
    return " ".join(parts)


def cmd_validate(args: argparse.Namespace) -> int:
    from harness.analysis.runs import require_run_folder
    from harness.trusted.evaluate import check_program_file

    if args.interpret:
        folder, label, text = args.interpret
        result = interpret(Path(folder), label, text)
        c = next(c for c in result["candidates"] if c["label"] == label)
        print(f"{label}: {c['stats']['verdict']['level'] if c.get('stats') else c.get('refused')}")
        print(f"report: {Path(folder) / 'report.md'}")
        return 0
    if not args.program and not args.run:
        raise ConfigError("give --program PATH (with --framework when the class name does not tell it) or --run RUN_DIR")
    profile = get_profile(args.profile)
    if args.hard_limit_s:
        profile = dataclasses.replace(profile, hard_limit_s=float(args.hard_limit_s))  # operational: not fingerprinted
    ledger_path = Path(args.ledger) if args.ledger else ledger_mod.default_ledger_path()
    candidates, notes = [], []
    for p in args.program or []:  # every input is checked before anything is written
        fw, _ = check_program_file(p, args.framework)
        candidates.append(Candidate(fw, Path(p), f"{fw}-{slug(Path(p).stem)}", str(p)))
    for r in args.run or []:
        require_run_folder(Path(r))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = Path(args.out or REPO_ROOT / "results" / "validation" / (args.name or f"validate-{stamp}"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "inputs").mkdir(exist_ok=True)
    for r in args.run or []:
        found, run_notes = candidates_from_run(Path(r), args.top_k, ledger_path, work / "inputs", args.fingerprint)
        candidates += found
        notes += run_notes
    if not candidates:
        print("harness validate: no candidate to validate" + (f" ({'; '.join(notes)})" if notes else ""), flush=True)
        return 1
    name = args.name or work.name
    seeds = list(range(args.seed_base, args.seed_base + args.seeds))
    result = validate(candidates, profile, work, tuning=args.tuning, trials=args.trials, seeds=seeds,
                      ladder=not args.no_ladder, threads=args.threads, jobs=args.jobs,
                      ledger_path=ledger_path, job_limit_s=args.job_limit_s,
                      log=lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True),
                      family_with=[Path(p) for p in args.family_with or []], name=name,
                      command=command_line(args), notes=notes, executor=args.executor)
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
    p.add_argument("--tuning", choices=list(protocol.TUNING_MODES), default="optuna",
                   help="optuna (option A): each side tuned with the same budget; shared (option B): the baseline "
                        "tuned, its settings used for both")
    p.add_argument("--trials", type=int, default=protocol.TUNING_TRIALS,
                   help=f"Optuna trials per tuned side (default {protocol.TUNING_TRIALS}, the design's; 0 = the "
                        "profile's defaults)")
    p.add_argument("--seeds", type=int, default=len(protocol.SEEDS),
                   help=f"evaluation seeds per side (default {len(protocol.SEEDS)})")
    p.add_argument("--seed-base", type=int, default=protocol.SEEDS[0],
                   help=f"first evaluation seed (default {protocol.SEEDS[0]}; the tuning seed is the profile's)")
    p.add_argument("--interpret", nargs=3, metavar=("REPORT_DIR", "LABEL", "TEXT"),
                   help="record the researcher's interpretation of a validated candidate's mechanism (a strong "
                        "verdict needs one) and redraw that report")
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
