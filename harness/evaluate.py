"""The evaluator behind ``evaluators/<fw>_eval.py``: what stock OpenEvolve calls.

Runs in OpenEvolve's processes, so it never imports torch's CUDA, never raises, never hangs:
1. static, here: frozen region, splice, policy;
2. the sandbox subprocess (own process group, hard wall-clock limit, resident-memory cap): dynamic
   gate, training at the profile's budget, post-training leak test;
3. score and artifacts back to OpenEvolve, one row to the ledger, accepted or rejected.
"""

from __future__ import annotations

import ast
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from harness import ledger, program
from harness.frameworks import get_framework
from harness.policy import check_block
from harness.profiles import ConfigError, Profile, get_profile, require_device
from harness.reasons import HINTS, Reason
from harness.scaffold import ATTENTION_KWARGS

STDERR_TAIL_CHARS = 4000
POLL_INTERVAL_S = 0.2

_PREPARED: dict[tuple, dict] = {}


def _module_aliases(head: str) -> set[str]:
    aliases = set()
    for node in ast.walk(ast.parse(head)):
        if isinstance(node, ast.Import):
            aliases |= {a.asname or a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            aliases |= {a.asname or a.name for a in node.names}
    return aliases


def _group_rss_mib(pgid: int) -> float:
    total_pages = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            with open(f"/proc/{entry.name}/statm") as f:
                total_pages += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total_pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def run_limited(cmd: list[str], limit_s: float, memory_cap_mib: int, log_path: Path, env: dict | None = None) -> str:
    """Run cmd in its own process group; kill the whole group past the wall-clock limit or the
    resident-memory cap. Returns "exited", "timeout" or "memory"."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
        deadline = time.monotonic() + limit_s
        outcome = "exited"
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    outcome = "timeout"
                elif _group_rss_mib(proc.pid) > memory_cap_mib:
                    outcome = "memory"
                if outcome != "exited":
                    break
                time.sleep(POLL_INTERVAL_S)
        finally:
            # Always reap the group: a candidate may leave children behind even when the sandbox exits.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    return outcome


def _tail(path: Path, chars: int = STDERR_TAIL_CHARS) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _sandbox(mode: str, request: dict, limit_s: float, memory_cap_mib: int) -> tuple[str, dict | None, str]:
    """Run the sandbox in an evaluation slot (harness.slots): it waits for a free slot, at most
    ``$HARNESS_SLOT_WAIT_S`` (default: the sandbox's own limit), holds it for its lifetime and sees only the
    slot's GPU. No slot in time is an ``infrastructure`` result, never the candidate's failure."""
    import contextlib

    from harness import slots

    wait_s = float(os.environ.get("HARNESS_SLOT_WAIT_S") or limit_s)
    with contextlib.ExitStack() as held:
        try:
            slot = held.enter_context(slots.acquire(wait_s))
        except (slots.SlotTimeout, ValueError) as exc:
            return "exited", {"reason": Reason.INFRASTRUCTURE.value, "message": f"no evaluation slot: {exc}"}, ""
        with tempfile.TemporaryDirectory(prefix="harness-sandbox-") as tmp:
            tmp = Path(tmp)
            (tmp / "request.json").write_text(json.dumps(request))
            result_path, log_path = tmp / "result.json", tmp / "sandbox.log"
            env = {**os.environ, "PYTHONUNBUFFERED": "1", **slot.env()}
            outcome = run_limited([sys.executable, "-m", "harness.sandbox", mode, str(tmp / "request.json"),
                                   str(result_path)], limit_s, memory_cap_mib, log_path, env)
            result = json.loads(result_path.read_text()) if outcome == "exited" and result_path.exists() else None
            return outcome, result, _tail(log_path)


def _request(framework: str, profile: Profile, ledger_path: Path) -> dict:
    return {"framework": framework, "profile": profile.name, "objective": profile.objective,
            "data_source": profile.data_source, "ledger": str(ledger_path)}


def prepare(framework: str, profile: Profile | None = None, ledger_path: Path | None = None) -> dict:
    """Check the set-up and make sure the baseline exists. Raises ConfigError with the reason when the
    run cannot start (unknown profile or framework, no CUDA for a CUDA profile, missing data)."""
    profile = profile or get_profile()
    fw = get_framework(framework)
    ledger_path = Path(ledger_path or ledger.default_ledger_path())
    key = (fw.name, profile, str(ledger_path))
    if key in _PREPARED:
        return _PREPARED[key]
    require_device(profile)
    request = _request(fw.name, profile, ledger_path)
    # Preparing may train the baseline once: allow it the sandbox's limit plus data preparation time.
    outcome, result, log = _sandbox("prepare", request, 2 * profile.hard_limit_s, profile.memory_cap_mib)
    if result is None or "config_error" in result or "fingerprint" not in result:
        detail = (result or {}).get("config_error") or (result or {}).get("message") or f"sandbox {outcome}"
        raise ConfigError(f"cannot prepare the {fw.name} evaluator under profile {profile.name!r}: {detail}\n{log[-2000:]}")
    if result["baseline_computed"]:
        ledger.put_baseline(result["fingerprint"]["id"], fw.name, profile.objective, result["baseline"], ledger_path)
    prepared = {"fingerprint": result["fingerprint"], "baseline": result["baseline"], "profile": profile,
                "ledger": ledger_path}
    _PREPARED[key] = prepared
    return prepared


def _float_metrics(raw: dict) -> dict[str, float]:
    out = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        value = float(value)
        if math.isfinite(value):
            out[key] = value
    return out


def _objective_metrics(objective: dict) -> dict[str, float]:
    out = {"objective_fitness": objective["fitness"], "largest_rung_loss": objective["largest_rung_loss"]}
    for key in ("final_loss", "scaling_a", "scaling_b"):
        if key in objective:
            out[key] = objective[key]
    for run in objective["runs"]:
        d, layers, _ = run["rung"]
        out[f"val_loss_d{d}_l{layers}"] = run["final_val_loss"]
        out[f"ms_per_step_d{d}_l{layers}"] = run["ms_per_step"]
    # The validation loss at the first evaluation of the last rung: recorded, never scored, so that the
    # analysis can show how well an early-training proxy would have ranked the candidates.
    first = objective["runs"][-1]["val_curve"][0]
    out["early_val_loss"], out["early_val_step"] = first[1], first[0]
    return out


def _store_code(text: str, ledger_path: Path) -> tuple[str, str]:
    digest = program.sha256(text)
    folder = ledger_path.parent / "programs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest[:16]}.py"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return digest, str(path)


def _result(framework: str, reason: Reason, message: str, *, score: float = 0.0, metrics: dict | None = None,
            details: str = "", flags: list[str] | None = None, prepared: dict | None = None, code: str = "",
            timings: dict | None = None, started: float = 0.0):
    """Build what OpenEvolve receives (plain floats, string artifacts) and write the ledger row."""
    valid = reason == Reason.OK
    score = float(score) if valid and math.isfinite(score) and score > 0 else 0.0
    metrics = _float_metrics(metrics or {})
    metrics.update({"combined_score": score, "valid": 1.0 if valid else 0.0, "eval_wall_s": time.time() - started})
    if reason == Reason.INFRASTRUCTURE:
        verdict = "infrastructure"
    elif not valid:
        verdict = "rejected"
    else:
        verdict = "flagged" if flags else "valid"
    fp = (prepared or {}).get("fingerprint") or {}
    artifacts = {
        "reason": reason.value,
        "message": message,
        "hint": HINTS[reason],
        "fingerprint_id": str(fp.get("id", "")),
    }
    if flags:
        artifacts["flags"] = "\n".join(flags)
    if details:
        artifacts["details"] = details[-STDERR_TAIL_CHARS:]
    try:
        ledger_path = (prepared or {}).get("ledger") or ledger.default_ledger_path()
        digest, code_path = _store_code(code, Path(ledger_path))
        profile = (prepared or {}).get("profile")
        artifacts["ledger_row"] = str(ledger.record_evaluation({
            "framework": framework, "program_hash": digest, "code_path": code_path, "verdict": verdict,
            "reason": reason.value, "message": message, "combined_score": score, "metrics": metrics,
            "fingerprint": fp, "profile": profile.name if profile else None,
            "seed": profile.train_seed if profile else None, "wall_s": metrics["eval_wall_s"], "timings": timings or {},
        }, ledger_path))
    except Exception as exc:  # noqa: BLE001 - the score still goes back; the failure is visible in artifacts
        artifacts["ledger_error"] = f"{type(exc).__name__}: {exc}"
    return _wrap(metrics, artifacts)


def _wrap(metrics: dict, artifacts: dict):
    try:
        from openevolve.evaluation_result import EvaluationResult
    except ImportError:
        return {**metrics}
    return EvaluationResult(metrics=metrics, artifacts=artifacts)


def evaluate(framework: str, program_path: str, profile: Profile | None = None, ledger_path: Path | None = None):
    """Score one candidate file. Never raises; every rejection scores exactly 0.0 with a reason."""
    started = time.time()
    try:
        return _evaluate(framework, program_path, profile, ledger_path, started)
    except Exception as exc:  # noqa: BLE001 - fail closed
        return _result(framework, Reason.INFRASTRUCTURE, f"the evaluator itself failed: {type(exc).__name__}: {exc}",
                       details=traceback.format_exc(), started=started)


def _evaluate(framework: str, program_path: str, profile: Profile | None, ledger_path: Path | None, started: float):
    try:
        prepared = prepare(framework, profile, ledger_path)
    except ConfigError as exc:
        return _result(framework, Reason.INFRASTRUCTURE, str(exc), started=started)
    profile = prepared["profile"]
    fw = get_framework(framework)
    pristine = fw.seed_source()
    candidate = Path(program_path).read_text(errors="replace")
    common = {"prepared": prepared, "started": started}
    try:
        spliced = program.splice(pristine, candidate)
    except program.FrozenRegionError as exc:
        return _result(framework, Reason.FROZEN_REGION, str(exc), code=candidate, **common)
    parts = program.split(spliced)
    try:
        report = check_block(parts.block, fw.class_name, ATTENTION_KWARGS, _module_aliases(parts.head),
                             line_offset=program.block_offset(pristine) - 1)
    except SyntaxError as exc:
        lineno = (exc.lineno or 0) + program.block_offset(pristine) - 1
        return _result(framework, Reason.SYNTAX, f"line {lineno}: {exc.msg}", code=spliced, **common)
    if not report.ok:
        return _result(framework, Reason.POLICY, "; ".join(report.violations[:8]), code=spliced, **common)

    with tempfile.TemporaryDirectory(prefix="harness-program-") as tmp:
        program_file = Path(tmp) / "program.py"
        program_file.write_text(spliced)
        request = {**_request(fw.name, profile, prepared["ledger"]), "program": str(program_file),
                   "fingerprint_id": prepared["fingerprint"]["id"], "baseline": prepared["baseline"]}
        outcome, result, log = _sandbox("evaluate", request, profile.hard_limit_s, profile.memory_cap_mib)
    common["code"] = spliced
    if outcome == "timeout":
        return _result(framework, Reason.TIMEOUT, f"the evaluation was killed after its hard limit of "
                       f"{profile.hard_limit_s:.0f} s", details=log, **common)
    if outcome == "memory":
        return _result(framework, Reason.MEMORY, f"the sandbox exceeded its memory cap of {profile.memory_cap_mib} MiB "
                       "and was killed", details=log, **common)
    if result is None:
        return _result(framework, Reason.CRASH, "the sandbox process died without a result (killed by a signal "
                       "or hard crash)", details=log, **common)
    reason = Reason(result.get("reason", "crash"))
    metrics = dict(result.get("metrics", {}))
    if "objective" in result:
        metrics.update(_objective_metrics(result["objective"]))
    details = "\n".join(filter(None, [result.get("traceback", ""), log if reason not in (Reason.OK,) else ""]))
    return _result(framework, reason, result.get("message", ""), score=result.get("combined_score", 0.0),
                   metrics=metrics, details=details, flags=result.get("flags"), timings=result.get("timings"), **common)


def make_evaluator(framework: str):
    """The ``evaluate(program_path)`` of one framework. Preparing at import time makes configuration
    errors stop the OpenEvolve run at start instead of being scored as candidate failures."""
    prepare(framework)

    def evaluate_program(program_path: str):
        return evaluate(framework, program_path)

    evaluate_program.__name__ = "evaluate"
    return evaluate_program
