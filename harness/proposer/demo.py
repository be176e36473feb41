"""The demo: stock ``openevolve-run`` against the proposer.

``run_demo`` drives the stock ``openevolve-run`` CLI against an in-process proposer server in a
subprocess, and past its timeout kills the whole process tree, the evaluator's sandboxes included.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness.proposer.server import MODEL_NAME, Proposer, ProposerServer
from harness.trusted.frameworks import FRAMEWORKS, REPO_ROOT
from harness.trusted.process_lifetime import stat_fields, tied


@dataclass
class DemoRun:
    output_dir: Path
    ledger_path: Path
    returncode: int
    log_path: Path
    proposals_path: Path
    wall_s: float = 0.0
    timed_out: bool = False

    @property
    def checkpoints(self) -> list[Path]:
        folder = self.output_dir / "checkpoints"
        found = [p for p in folder.glob("checkpoint_*") if p.is_dir() and p.name.split("_")[-1].isdigit()]
        return sorted(found, key=lambda p: int(p.name.split("_")[-1]))

    @property
    def latest_checkpoint(self) -> Path | None:
        return self.checkpoints[-1] if self.checkpoints else None

    @property
    def best_program(self) -> Path:
        return self.output_dir / "best" / "best_program.py"


def _openevolve_command() -> list[str]:
    script = Path(sys.executable).parent / "openevolve-run"
    if script.exists():
        return [str(script)]
    found = shutil.which("openevolve-run")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from openevolve.cli import main; sys.exit(main())"]


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = stat_fields(entry.name)
        if fields is None or not fields[1].isdigit():
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def _kill_tree(proc: subprocess.Popen) -> None:
    """Kill the run's process group and every descendant: the evaluator's sandboxes run in sessions of
    their own, so killing the group alone would leave them behind. SIGTERM first (OpenEvolve shuts its
    pool down on it), SIGKILL after 5 s."""
    victims = set(_descendants(proc.pid))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        victims |= set(_descendants(proc.pid))
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in victims:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def default_demo_dir(framework: str) -> Path:
    return REPO_ROOT / "results" / "runs" / f"demo-{framework}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_demo(framework: str, iterations: int, output_dir: Path, adversarial_every: int = 0, seed: int = 0,
             checkpoint: Path | None = None, extra_env: dict | None = None, timeout_s: float = 900,
             echo: bool | Callable[[str], None] = False) -> DemoRun:
    """Run stock ``openevolve-run`` on one framework against an in-process proposer.

    ``HARNESS_PROFILE=smoke`` unless ``extra_env`` says otherwise. ``checkpoint`` resumes: OpenEvolve continues
    at last_iteration + 1 and runs ``iterations`` more. Its exit code is 0 even when every iteration failed:
    check the checkpoints and the ledger. Proposals are logged to ``output_dir/proposals.jsonl`` (appended on
    resume, so the request numbering and the adversarial cycle continue)."""
    return run_with_builtin_proposer(framework, iterations, output_dir=output_dir, adversarial_every=adversarial_every,
                                     seed=seed, checkpoint=checkpoint,
                                     extra_env={"HARNESS_PROFILE": "smoke", **(extra_env or {})},
                                     timeout_s=timeout_s, echo=echo)


def run_with_builtin_proposer(framework: str, iterations: int, *, output_dir: Path, seed: int = 0,
                              adversarial_every: int = 0, **kwargs) -> DemoRun:
    """``run_openevolve`` against the built-in proposer, served in-process on an ephemeral localhost port."""
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    server = ProposerServer("127.0.0.1", 0, Proposer(seed, adversarial_every, output_dir / "proposals.jsonl"))
    server.start_background()
    try:
        return run_openevolve(framework, iterations, output_dir=output_dir, api_base=server.url, model=MODEL_NAME,
                              **kwargs)
    finally:
        server.shutdown()
        server.server_close()


def run_openevolve(framework: str, iterations: int, *, output_dir: Path, api_base: str, model: str,
                   config_path: Path | None = None, checkpoint: Path | None = None, extra_env: dict | None = None,
                   timeout_s: float = 900, echo: bool | Callable[[str], None] = False) -> DemoRun:
    """Run stock ``openevolve-run`` on one framework against an OpenAI-compatible endpoint.

    The subprocess runs with its working directory set to ``output_dir`` (OpenEvolve writes large artifacts to
    ``./artifacts``), ``OPENAI_API_KEY=local`` if unset, and ``config_path`` (default the framework's config in
    ``openevolve_configs/``). OpenEvolve's output goes to ``output_dir/openevolve.out``. Past ``timeout_s`` the
    run is killed, its sandboxes included."""
    from harness.trusted import ledger

    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; choose one of {sorted(FRAMEWORKS)}")
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    proposals_path, log_path = output_dir / "proposals.jsonl", output_dir / "openevolve.out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("OPENAI_API_KEY", "local")
    env.update({k: str(v) for k, v in (extra_env or {}).items()})
    ledger_path = Path(env["HARNESS_LEDGER"]) if env.get("HARNESS_LEDGER") else ledger.default_ledger_path()
    say = echo if callable(echo) else (lambda line: print(line, flush=True)) if echo else (lambda line: None)

    fw = FRAMEWORKS[framework]
    config = Path(config_path) if config_path else REPO_ROOT / "openevolve_configs" / f"{framework}.yaml"
    cmd = _openevolve_command() + [
        str(fw.seed_path), str(REPO_ROOT / "evaluators" / f"{framework}_eval.py"),
        "--config", str(config.resolve()), "--iterations", str(iterations), "--output", str(output_dir),
        "--api-base", api_base, "--primary-model", model,
    ]
    if checkpoint is not None:
        cmd += ["--checkpoint", str(Path(checkpoint).resolve())]
    started = time.time()
    timed_out = False
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(tied(cmd), cwd=output_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, text=True, errors="replace")

        def pump():
            for line in proc.stdout:
                log.write(line)
                log.flush()
                say(line.rstrip("\n"))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_tree(proc)
        reader.join(timeout=10)
        if timed_out:
            log.write(f"\n[harness] openevolve-run killed after {timeout_s:.0f} s\n")
    return DemoRun(output_dir, ledger_path, proc.returncode if not timed_out else -9, log_path, proposals_path,
                   time.time() - started, timed_out)


def summarise(run: DemoRun, since: float, framework: str) -> int:
    from harness.trusted import ledger

    ok = run.returncode == 0 and not run.timed_out
    print()
    print(f"openevolve-run exited with {run.returncode}{' (killed: timeout)' if run.timed_out else ''} "
          f"after {run.wall_s:.0f} s")
    proposals = [json.loads(l) for l in run.proposals_path.read_text().splitlines()] if run.proposals_path.exists() else []
    if proposals:
        adv = sum(p["adversarial"] for p in proposals)
        print(f"proposals:      {run.proposals_path} ({len(proposals)} so far, {adv} adversarial)")
    try:
        rows = [r for r in ledger.evaluations(run.ledger_path, framework) if r["created_at"] >= since]
    except Exception:  # noqa: BLE001 - the summary is informative only
        rows = []
    if rows:
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["reason"]] = counts.get(r["reason"], 0) + 1
        best = max(r["combined_score"] for r in rows)
        print(f"evaluations:    {len(rows)} this run ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}); "
              f"best combined_score {best:.4f}")
    latest = run.latest_checkpoint
    print(f"database:       {latest if latest else '(no checkpoint written: use --iterations a multiple of 5)'}")
    print(f"best program:   {run.best_program if run.best_program.exists() else '(none)'}")
    print(f"ledger:         {run.ledger_path}")
    print(f"openevolve log: {run.log_path} and {run.output_dir / 'logs'}")
    if latest:
        print(f"resume with:    harness demo {framework} --iterations 5 --output {run.output_dir} --checkpoint {latest}")
    if not ok or latest is None:
        print("harness demo: the run did not finish cleanly; see the log above", file=sys.stderr)
        return 1
    return 0
