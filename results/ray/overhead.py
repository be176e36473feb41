"""What the ``ray`` executor costs over ``local``: the same evaluation, alternately on both, on one machine.

    python results/ray/overhead.py [--repeats 3] [--framework ttr] [--out results/ray]

Uses the cluster named by RAY_ADDRESS (and RAY_AUTH_* for its token) when set; otherwise starts a Ray head on
loopback (2 CPUs, token authentication) for the measurement and stops it afterwards. Runs under the profile in
HARNESS_PROFILE (default smoke), with its own temporary data cache and ledger. Writes
``overhead-<profile>-<date>.json`` (every evaluation's wall time, where it ran, and the fingerprint) and prints a
table. The "outside the task" column is the Ray evaluation's wall time minus the time its task ran on the
worker: connecting, submitting, scheduling and returning the result.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _start_head(log_path: Path) -> tuple[subprocess.Popen, dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_ADDRESS": f"127.0.0.1:{port}"}
    os.environ.update(env)
    with open(log_path, "wb") as log:
        head = subprocess.Popen(["ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port",
                                 str(port), "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "false",
                                 "--disable-usage-stats"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while b"Ray runtime started" not in log_path.read_bytes():
        if head.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the Ray head did not start:\n" + log_path.read_text()[-2000:])
        time.sleep(0.5)
    return head, env


def _stop_head(head: subprocess.Popen) -> None:
    head.send_signal(signal.SIGTERM)
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--framework", default="ttr")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent))
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="harness-ray-overhead-"))
    os.environ.setdefault("HARNESS_PROFILE", "smoke")
    os.environ.update({"HARNESS_CACHE": str(work / "cache"), "HARNESS_LEDGER": str(work / "ledger.sqlite"),
                       "HARNESS_EXECUTOR": "local"})
    head = None
    if not os.environ.get("RAY_ADDRESS"):
        head, _ = _start_head(work / "head.log")
    try:
        from harness.trusted.evaluate import evaluate, prepare
        from harness.trusted.frameworks import get_framework

        prepared = prepare(args.framework, executor_name="local")
        prepare(args.framework, executor_name="ray")
        program = work / "program.py"
        program.write_text(get_framework(args.framework).seed_source())
        rows = []
        for repeat in range(args.repeats):
            for name in ("local", "ray"):
                started = time.time()
                result = evaluate(args.framework, str(program), executor_name=name)
                wall = time.time() - started
                from harness.trusted import ledger

                row = next(r for r in ledger.evaluations() if r["id"] == int(result.artifacts["ledger_row"]))
                ex = row["execution"]
                in_task = ex["ended_at"] - ex["started_at"] if name == "ray" else None
                rows.append({"repeat": repeat, "executor": name, "reason": result.artifacts["reason"],
                             "combined_score": result.metrics["combined_score"], "wall_s": wall,
                             "in_task_s": in_task, "execution": ex})
                print(f"{name:5s} repeat {repeat}: {wall:6.1f} s  {result.artifacts['reason']}  "
                      f"score {result.metrics['combined_score']:.6f}", flush=True)
    finally:
        if head is not None:
            _stop_head(head)

    def median(executor: str, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["executor"] == executor)

    local_s, ray_s = median("local", "wall_s"), median("ray", "wall_s")
    outside = statistics.median(r["wall_s"] - r["in_task_s"] for r in rows if r["executor"] == "ray")
    fp = prepared["fingerprint"]
    summary = {"framework": args.framework, "profile": os.environ["HARNESS_PROFILE"], "repeats": args.repeats,
               "cluster": "started here, loopback, 2 CPUs" if head is not None else "RAY_ADDRESS",
               "median_local_s": local_s, "median_ray_s": ray_s, "median_ray_outside_task_s": outside,
               "same_scores": len({r["combined_score"] for r in rows}) == 1, "fingerprint": fp, "evaluations": rows}
    print(f"\n| executor | median wall, s | outside the task, s |\n|---|---|---|\n| local | {local_s:.1f} | — |\n"
          f"| ray | {ray_s:.1f} | {outside:.1f} |\nsame scores on both: {summary['same_scores']}; "
          f"fingerprint {fp['id']} ({fp['hardware'].get('gpu') or fp['hardware']['cpu']})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"overhead-{summary['profile']}-{time.strftime('%Y%m%d')}.json"
    path.write_text(json.dumps(summary, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
