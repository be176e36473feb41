"""The ``harness`` command: train, evaluate, propose, analyse, validate, run whole campaigns and benchmark
attention programs."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from harness.trusted.profiles import ConfigError


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    from harness.data import default_cache_dir, load_token_data
    from harness.trusted.fingerprint import environment_fingerprint
    from harness.sandbox.hardware import hardware
    from harness.trusted.profiles import get_profile, require_device
    from harness.sandbox.loader import load_attention
    from harness.sandbox.train import train

    from harness.trusted.evaluate import check_program_file, static_gate
    from harness.trusted.frameworks import get_framework
    from harness.trusted.program import splice

    framework, text = check_program_file(args.program)
    spliced = splice(get_framework(framework).seed_source(), text)  # what the evaluator would train
    problem = static_gate(framework, spliced)
    if problem:
        raise ConfigError(f"{args.program}: refused by the static gate ({problem[0].value}): {problem[1]}")
    profile = get_profile(args.profile)
    require_device(profile)
    path = Path(args.program)
    attention_cls = load_attention(spliced, str(path))
    _log(f"profile {profile.name} on {profile.device}: {profile.steps} steps, batch {profile.batch_size_seqs} x "
         f"{profile.context_len_tokens} tokens, data {profile.data_source}")
    data = load_token_data(profile.data_source, profile.vocab_size, profile.val_tokens, default_cache_dir(),
                           profile.tokenizer_train_bytes, synthetic_stories_n=profile.synthetic_stories)
    _log(f"data: {len(data.train):,} train tokens, {len(data.monitor):,} monitoring tokens, vocab {data.vocab_size}")
    rungs = profile.ladder if args.rung == "all" else [profile.ladder[int(args.rung) if args.rung else profile.reference_rung]]
    fingerprint = environment_fingerprint(profile, data, hardware(profile.device))
    runs = []
    for rung in rungs:
        result = train(attention_cls, profile, rung, data, seed=args.seed, log=_log)
        runs.append(result.to_dict())
        _log(f"rung {rung}: status {result.status}, final loss on the monitoring split {result.final_monitor_loss}, "
             f"{result.non_embedding_params:,} non-embedding params, {result.ms_per_step:.1f} ms/step, "
             f"{result.tokens_per_s:,.0f} tokens/s, {result.wall_s:.1f} s (ln V = {math.log(data.vocab_size):.3f})")
    record = {"program": str(path), "profile": profile.to_dict(), "fingerprint": fingerprint, "runs": runs}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=2))
        _log(f"wrote {args.out}")
    return 0 if all(r["status"] == "ok" for r in runs) else 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    from harness.trusted.evaluate import evaluate, prepare
    from harness.trusted.profiles import get_profile

    if not Path(args.program).is_file():
        raise ConfigError(f"{args.program}: no such file")
    profile = get_profile(args.profile)
    prepare(args.framework, profile, executor_name=args.executor)
    result = evaluate(args.framework, args.program, profile, executor_name=args.executor)
    metrics = getattr(result, "metrics", result)
    artifacts = getattr(result, "artifacts", {})
    print(json.dumps({"metrics": metrics, "artifacts": artifacts}, indent=2))
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from harness.trusted.evaluate import prepare
    from harness.trusted.profiles import get_profile

    profile = get_profile(args.profile)
    for framework in args.frameworks:
        prepared = prepare(framework, profile, executor_name=args.executor)
        base = prepared["baseline"]
        _log(f"{framework}: fingerprint {prepared['fingerprint']['id']}, {profile.objective} fitness {base['fitness']:.5f}, "
             f"largest-rung loss {base['largest_rung_loss']:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train the frozen model around a program's attention class")
    p.add_argument("program", help="path of a program, e.g. initial_programs/ttr.py")
    p.add_argument("--profile", help="smoke | pilot | full (default: $HARNESS_PROFILE or full)")
    p.add_argument("--seed", type=int, default=None, help="training seed (default: the profile's)")
    p.add_argument("--rung", default=None, help="ladder index, or 'all' (default: the reference rung)")
    p.add_argument("--out", help="write the run record (curves, timings, fingerprint) as JSON here")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score one program exactly as OpenEvolve would")
    p.add_argument("framework", choices=["cd", "ttr", "mm"])
    p.add_argument("program")
    p.add_argument("--profile")
    p.add_argument("--executor", choices=["local", "ray"], help="default: $HARNESS_EXECUTOR or local")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("baseline", help="compute (or show) the cached baselines for this machine (or a Ray worker)")
    p.add_argument("frameworks", nargs="*", default=["cd", "ttr", "mm"])
    p.add_argument("--profile")
    p.add_argument("--executor", choices=["local", "ray"], help="default: $HARNESS_EXECUTOR or local")
    p.set_defaults(func=cmd_baseline)

    # Subcommands defined beside the code they drive; each module exposes register(subparsers).
    from harness.analysis import commands as analysis_commands
    from harness.campaign import commands as campaign_commands
    from harness.diagnostics import bench, gpu_check
    from harness.proposer import commands as proposer_commands
    from harness.validation import commands as validation_commands

    for module in (proposer_commands, analysis_commands, validation_commands, campaign_commands, bench, gpu_check):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from harness.data import DataError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataError) as exc:
        print(f"harness {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
