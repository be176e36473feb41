"""The ``harness campaign`` command line:

    harness campaign [--frameworks cd,ttr,mm] [--profile P] [--iterations N]
                     [--api-base URL --model M | --proposer builtin] [--seeds 10] [--trials T] [--out DIR]

Run the same command again, with the campaign's ``--out`` (the first line it logs says it), to resume a campaign that
stopped.
"""

from __future__ import annotations

import argparse
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from harness.trusted.frameworks import FRAMEWORKS, REPO_ROOT
from harness.trusted.profiles import ConfigError, get_profile, require_device
from harness.validation import protocol

ENDPOINT_TIMEOUT_S = 10.0


def check_endpoint(api_base: str, timeout_s: float = ENDPOINT_TIMEOUT_S) -> None:
    """An OpenAI-compatible endpoint answers ``GET {api_base}/models``; any HTTP answer (even 401) shows that it is
    reachable. No answer at all is a clear error before anything runs."""
    url = api_base.rstrip("/") + "/models"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY', '')}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(f"cannot reach the LLM endpoint {api_base} ({reason}). Start the server or fix --api-base "
                          "(curl " + url + " must answer), or run offline with --proposer builtin") from None


def parse_frameworks(text: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = [n for n in names if n not in FRAMEWORKS]
    if unknown or not names:
        raise ConfigError(f"unknown framework(s) {unknown or [text]}: choose from {', '.join(sorted(FRAMEWORKS))}")
    if len(set(names)) != len(names):
        raise ConfigError(f"a framework is named twice in --frameworks {text}")
    return names


def cmd_campaign(args: argparse.Namespace) -> int:
    from harness.analysis.runs import display_path
    from harness.campaign.plan import Settings
    from harness.campaign.runner import Campaign

    frameworks = parse_frameworks(args.frameworks)
    profile = get_profile(args.profile)
    require_device(profile)
    if args.iterations < 1:
        raise ConfigError("--iterations must be at least 1")
    if args.seeds < 2:
        raise ConfigError("--seeds must be at least 2: the paired t-test needs two pairs")
    if args.api_base or args.model:
        if not (args.api_base and args.model):
            raise ConfigError("an LLM proposer needs both --api-base URL and --model NAME (or use --proposer builtin)")
        if args.proposer == "builtin":
            raise ConfigError("choose one proposer: --api-base/--model or --proposer builtin")
        if not os.environ.get("OPENAI_API_KEY"):
            raise ConfigError("OPENAI_API_KEY is not set: OpenEvolve sends it to the endpoint (export it first)")
        check_endpoint(args.api_base)
        proposer = {"kind": "llm", "api_base": args.api_base, "model": args.model}
    else:
        proposer = {"kind": "builtin", "seed": args.proposer_seed}
    trials = args.trials if args.trials is not None else (protocol.TUNING_TRIALS
                                                           if profile.name == protocol.DESIGN_PROFILE else 0)
    settings = Settings(frameworks, profile.name, profile.digest(), args.iterations, proposer,
                        tuple(range(args.seed_base, args.seed_base + args.seeds)), args.tuning, trials)
    out = Path(args.out) if args.out else REPO_ROOT / "results" / "campaigns" / f"campaign-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    args.out = str(out)  # the command that resumes this campaign names its folder: another run would start afresh
    log_file = open(out / "campaign.log", "a", buffering=1)

    def log(message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        log_file.write(line + "\n")

    from harness.validation.commands import command_line

    command = command_line(args, "campaign")
    log(f"[campaign] folder {display_path(out)}; to resume after a stop: {command}")
    campaign = Campaign(settings, profile, out, command=command, jobs=args.jobs, threads=args.threads,
                        progress_interval_s=args.progress_every, log=log)
    try:
        report = campaign.run()
    finally:
        log_file.close()
    print(f"report: {display_path(report)}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("campaign", help="the users' whole experiment: evolve, analyse, validate, compare "
                                               "(resumable: run the same command with its --out again)")
    p.add_argument("--frameworks", default="cd,ttr,mm", help="comma-separated (default cd,ttr,mm)")
    p.add_argument("--profile", help="smoke | pilot | full (default: $HARNESS_PROFILE or full)")
    p.add_argument("--iterations", type=int, default=protocol.EVOLUTION_ITERATIONS,
                   help=f"OpenEvolve iterations per framework (default {protocol.EVOLUTION_ITERATIONS}, the design's)")
    p.add_argument("--api-base", help="an OpenAI-compatible endpoint for the proposals (with --model)")
    p.add_argument("--model", help="the model name at --api-base")
    p.add_argument("--proposer", choices=["builtin"], help="the built-in proposer: offline, no network (the default "
                                                           "without --api-base)")
    p.add_argument("--proposer-seed", type=int, default=0, help="the built-in proposer's seed (default 0)")
    p.add_argument("--seeds", type=int, default=len(protocol.SEEDS), help="validation seeds per side (default 10)")
    p.add_argument("--seed-base", type=int, default=protocol.SEEDS[0], help="first validation seed (default 42)")
    p.add_argument("--tuning", choices=list(protocol.TUNING_MODES), default="optuna")
    p.add_argument("--trials", type=int, help=f"tuning trials per side (default {protocol.TUNING_TRIALS} under the "
                                              "full profile, else 0: the profile's recipe)")
    p.add_argument("--jobs", type=int, default=1, help="validation training jobs at once (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per validation training job (default 1)")
    p.add_argument("--progress-every", type=float, default=30.0, help="seconds between progress lines (default 30)")
    p.add_argument("--out", help="campaign folder (default results/campaigns/campaign-<timestamp>/)")
    p.set_defaults(func=cmd_campaign)
