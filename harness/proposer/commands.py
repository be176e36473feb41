"""The proposer's subcommands.

    harness proposer [--host 127.0.0.1] [--port 8765] [--seed 0] [--adversarial-every N] [--log FILE]
    harness demo FRAMEWORK [--iterations 5] [--output DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from harness.proposer.demo import default_demo_dir, run_demo, summarise
from harness.proposer.server import MODEL_NAME, Proposer, ProposerServer
from harness.trusted.frameworks import FRAMEWORKS


def cmd_proposer(args: argparse.Namespace) -> int:
    proposer = Proposer(args.seed, args.adversarial_every, args.log)
    server = ProposerServer(args.host, args.port, proposer, verbose=args.verbose)
    print(server.url, flush=True)
    print(f"[proposer] serving {MODEL_NAME} (seed {args.seed}, adversarial every {args.adversarial_every or 'never'}"
          f"{', log ' + str(args.log) if args.log else ''}); Ctrl+C stops", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    output = Path(args.output) if args.output else default_demo_dir(args.framework)
    if args.iterations % 5:
        print(f"[demo] note: the configs checkpoint every 5 iterations; with --iterations {args.iterations} the "
              "final state is not checkpointed (use a multiple of 5)", file=sys.stderr)
    extra = {"HARNESS_PROFILE": args.profile} if args.profile else {}
    print(f"[demo] {args.framework}: {args.iterations} iterations of stock openevolve-run against the built-in "
          f"proposer, profile {extra.get('HARNESS_PROFILE', 'smoke')}, output {output}", flush=True)
    since = time.time()
    run = run_demo(args.framework, args.iterations, output, adversarial_every=args.adversarial_every, seed=args.seed,
                   checkpoint=Path(args.checkpoint) if args.checkpoint else None, extra_env=extra,
                   timeout_s=args.timeout, echo=True)
    return summarise(run, since, args.framework)


def register(subparsers) -> None:
    p = subparsers.add_parser("proposer", help="serve the built-in proposer (OpenAI-compatible, no weights, localhost)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765, help="0 = an ephemeral port (the URL is printed first)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--adversarial-every", type=int, default=0, metavar="N",
                   help="every N-th request gets an adversarial proposal (leak, frozen, params in turn); 0 = never")
    p.add_argument("--log", type=Path, help="append one JSON line per proposal here")
    p.add_argument("--verbose", action="store_true", help="log every HTTP request to stderr")
    p.set_defaults(func=cmd_proposer)

    p = subparsers.add_parser("demo", help="run stock openevolve-run end to end against the built-in proposer")
    p.add_argument("framework", choices=sorted(FRAMEWORKS))
    p.add_argument("--iterations", type=int, default=5, help="a multiple of 5 (the configs' checkpoint_interval)")
    p.add_argument("--output", help="output folder (default results/runs/demo-FW-<timestamp>/)")
    p.add_argument("--adversarial-every", type=int, default=0, metavar="N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", help="resume from this checkpoint folder (runs --iterations more)")
    p.add_argument("--profile", default=None, help="HARNESS_PROFILE for the run (default smoke)")
    p.add_argument("--timeout", type=float, default=3600.0, help="kill the run after this many seconds")
    p.set_defaults(func=cmd_demo)
