"""The ``harness analyze`` command.

    harness analyze RUN_DIR [RUN_DIR ...] [--ledger PATH] [--out DIR] [--name NAME] [--top K]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.analysis.report import analyze


def cmd_analyze(args: argparse.Namespace) -> int:
    result = analyze([Path(r) for r in args.runs], Path(args.ledger) if args.ledger else None,
                     Path(args.out) if args.out else None, args.name, args.top)
    for s in result["runs"]:
        v = s["validity"]
        bests = ", ".join(f"{g['best']['combined_score']:.4f} (fp {fp[:8]})" for fp, g in s["groups"].items() if g["best"])
        print(f"{s['name']} [{s['framework']}]: {v['evaluated']} evaluated, {v['valid']} valid, "
              f"{len(s['log_failures'])} log-only failures, best {bests or 'none'}, "
              f"{len(s['fingerprint_groups'])} fingerprint group(s), {len(s['unverifiable'])} unverifiable")
        fired = ", ".join(f"{r['rule']} at iteration {r['fired_at']}" for r in s["stopping_rules"]
                          if r["fired_at"] is not None)
        print(f"  stopping rules (flagged, nothing stopped): {fired or 'none triggered'}")
    print(f"report: {result['report_path']}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("analyze", help="post-hoc analysis of OpenEvolve output folders joined to the ledger")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="OpenEvolve output folder(s), one per framework")
    p.add_argument("--ledger", help="ledger file (default: $HARNESS_LEDGER or results/ledger.sqlite)")
    p.add_argument("--out", help="report folder (default: results/analysis/<name>/)")
    p.add_argument("--name", help="report name (default: the run folders' names)")
    p.add_argument("--top", type=int, default=10, help="programs per fingerprint group in the top table")
    p.set_defaults(func=cmd_analyze)
