"""The evaluator behind ``evaluators/<fw>_eval.py``: what stock OpenEvolve calls.

Runs in OpenEvolve's processes, so it never imports torch's CUDA, never raises, never hangs:
1. static, here: frozen region, splice, policy;
2. the sandbox subprocess (own process group, hard wall-clock limit, resident-memory cap): dynamic
   gate, training at the profile's budget, post-training leak test; it hands back the trained tensors. Then the
   trusted scorer (``harness.scorer``, no candidate code in its process) runs a forward-only sandbox on the scored
   split, in two parts that never meet, checks canary and duplicate windows, and measures the losses and counts
   the parameters itself. Both run on this host or on a Ray worker (harness.trusted.executor,
   ``HARNESS_EXECUTOR``); nothing else depends on where;
3. here again: the objective recomputed from the scorer's losses and counts (plain numbers, checked field by
   field), the parameter budget re-checked on those counts, and the score against the baseline
   (``harness.trusted.scoring``); no loss, score, fit or flag computed in a sandbox is read. Score and artifacts back to OpenEvolve, one row to the ledger, accepted or rejected.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from harness.trusted import confine, executor
from harness.trusted import ledger
from harness.trusted import program
from harness.trusted.frameworks import ATTENTION_KWARGS, FRAMEWORKS, framework_of, get_framework
from harness.trusted.policy import check_block, module_aliases
from harness.trusted.profiles import ConfigError, Profile, confinement_policy, get_profile, require_device
from harness.trusted.reasons import HINTS, Reason
from harness.trusted.scoring import (LARGEST_WHOLE, MalformedRecord, objective_from_untrusted, objective_metrics,
                                     parity_violation, printable, reported_runs, score, typed_runs)

STDERR_TAIL_CHARS = executor.STDERR_TAIL_CHARS
MESSAGE_MAX_CHARS = 2000  # of a rejection's message, in the ledger and in the LLM's next prompt

_PREPARED: dict[tuple, dict] = {}


def require_confinement(profile: Profile) -> None:
    """Stop at once where the profile requires a confined sandbox and this machine cannot confine it. (Where the
    layers are not known yet, the preparation's sandbox reports it as an infrastructure failure.)"""
    try:
        reason = confine.missing_confinement(profile.device)
    except confine.LayersUnknown:
        return
    if reason and confinement_policy(profile) == "required":
        raise ConfigError(confine.unconfined_message(profile.name, reason))


def sandbox_request(framework: str, profile: Profile, ledger_path: Path | None = None, **extra) -> dict:
    """The self-contained request every sandbox mode takes: the profile by name and the device it needs; with
    ``ledger_path``, every baseline the ledger knows for this framework and objective, keyed by fingerprint id."""
    request = {"framework": framework, "profile": profile.name, "objective": profile.objective,
               "data_source": profile.data_source, "device": profile.device,
               "confinement": confinement_policy(profile), **extra}
    if ledger_path is not None:
        request["baselines"] = ledger.baselines(framework, profile.objective, ledger_path)
    return request


def baseline_limit_s(profile: Profile) -> float:
    """Preparing may train the baseline once: the sandbox's limit plus as much again for data preparation."""
    return 2 * profile.hard_limit_s


def prepare(framework: str, profile: Profile | None = None, ledger_path: Path | None = None,
            executor_name: str | None = None) -> dict:
    """Check the set-up and make sure the baseline exists. Raises ConfigError with the reason when the
    run cannot start (unknown profile, framework or executor, no CUDA for a CUDA profile, missing data, no
    cluster). Under ``ray`` the set-up checked is that of the worker the preparation landed on."""
    profile = profile or get_profile()
    fw = get_framework(framework)
    ledger_path = Path(ledger_path or ledger.default_ledger_path())
    config = executor.ExecutorConfig.from_env(executor_name)
    key = (fw.name, profile, str(ledger_path), config)
    if key in _PREPARED:
        return _PREPARED[key]
    if config.name == "local":
        require_device(profile)  # a cluster's workers have the devices, not necessarily this host
        require_confinement(profile)
    run = executor.run_sandbox("prepare", sandbox_request(fw.name, profile, ledger_path), baseline_limit_s(profile),
                               profile.memory_cap_mib, executor=config.name)
    result = run.result
    if result is None or "config_error" in result or "fingerprint" not in result:
        detail = (result or {}).get("config_error") or (result or {}).get("message") or run.error or \
            f"sandbox {run.outcome}"
        raise ConfigError(f"cannot prepare the {fw.name} evaluator under profile {profile.name!r} "
                          f"({config.name} executor): {detail}\n{run.log[-2000:]}")
    try:
        baseline = objective_from_untrusted(result["baseline"], profile)
    except MalformedRecord as exc:
        raise ConfigError(f"the {fw.name} baseline's training record is malformed: {exc}") from None
    if result["baseline_computed"]:
        ledger.put_baseline(result["fingerprint"]["id"], fw.name, profile.objective, baseline, ledger_path)
    prepared = {"fingerprint": result["fingerprint"], "baseline": baseline, "profile": profile,
                "ledger": ledger_path, "executor": config.name}
    _PREPARED[key] = prepared
    return prepared


# The names of what the sandbox's gate measures (``harness.sandbox.checks``), which the ledger and the LLM's prompt
# receive. Any other name a sandbox hands back is dropped: OpenEvolve reads some names itself (its feature
# dimensions, ``complexity`` and ``diversity``, choose a program's cell in its archive), so a program that reached
# its result would otherwise choose its own cell, and collapse everyone else's into one.
GATE_METRICS = re.compile(
    r"(baseline_)?(attention_params|flops_per_token|flop_growth_exponent|attention_step_ms)|param_ratio"
    r"|attention_state_words|model_params_d\d+_l\d+|(eval_)?flop_ratio|eval_to_training_forward_flop_ratio"
    r"|matmul_flop_share|flop_ratio_at_horizon|step_time_ratio|memory_ratio|trained_leak_max_rel|causality_probes")


def gate_metrics(raw: object) -> dict[str, float]:
    """The gate's measurements in what a sandbox handed back: known names, finite numbers."""
    found = _float_metrics(raw) if isinstance(raw, dict) else {}
    return {key: value for key, value in found.items() if GATE_METRICS.fullmatch(key)}


# The most a record a sandbox reports (its fingerprint, its timings) may hold in the ledger: one program's 10 MB
# fingerprint grew the ledger by 40 MB, and reached the next prompt through the fingerprint's id.
REPORTED_RECORD_MAX_BYTES = 16_384


def _small(value: object) -> dict | None:
    """``value`` if it is a dict of plain JSON within ``REPORTED_RECORD_MAX_BYTES``, else None."""
    if not isinstance(value, dict):
        return None
    try:
        return value if len(json.dumps(value)) <= REPORTED_RECORD_MAX_BYTES else None
    except (TypeError, ValueError, RecursionError):
        return None


def _float_metrics(raw: dict) -> dict[str, float]:
    out = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, int) and abs(value) > LARGEST_WHOLE:  # JSON's whole numbers have no limit
            continue
        value = float(value)
        if math.isfinite(value):
            out[key] = value
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


def _bounded(message: str) -> str:
    """A message as the ledger and the LLM's next prompt get it (``printable``): a candidate can raise an exception
    whose text is gigabytes long."""
    message = printable(message)
    if len(message) <= MESSAGE_MAX_CHARS:
        return message
    cut = len(message) - MESSAGE_MAX_CHARS
    return message[:MESSAGE_MAX_CHARS // 2] + f" [... {cut} characters cut ...] " + message[-MESSAGE_MAX_CHARS // 2:]


def _result(framework: str, reason: Reason, message: str, *, score: float = 0.0, metrics: dict | None = None,
            details: str = "", flags: list[str] | None = None, prepared: dict | None = None, code: str = "",
            timings: dict | None = None, started: float = 0.0, fingerprint: dict | None = None,
            execution: dict | None = None, runs: list[dict] | None = None):
    """Build what OpenEvolve receives (plain floats, string artifacts) and write the ledger row.

    ``fingerprint``: the one the sandbox reported (that of the host it ran on); the prepared one otherwise."""
    valid = reason == Reason.OK
    message = _bounded(str(message))
    score = float(score) if valid and math.isfinite(score) and score > 0 else 0.0
    metrics = _float_metrics(metrics or {})
    metrics.update({"combined_score": score, "valid": 1.0 if valid else 0.0, "eval_wall_s": time.time() - started})
    if reason == Reason.INFRASTRUCTURE:
        verdict = "infrastructure"
    elif not valid:
        verdict = "rejected"
    else:
        verdict = "flagged" if flags else "valid"
    fp = fingerprint or (prepared or {}).get("fingerprint") or {}
    artifacts = {
        "reason": reason.value,
        "message": message,
        "hint": HINTS[reason],
        "fingerprint_id": str(fp.get("id", ""))[:64],
    }
    if flags:
        artifacts["flags"] = "\n".join(flags)
    if details:
        artifacts["details"] = printable(details[-STDERR_TAIL_CHARS:])
    if execution:
        artifacts["execution"] = _execution_text(execution)
    profile = (prepared or {}).get("profile")
    eager = [r for r in runs or [] if r.get("compiled") is False]
    if profile is not None and profile.compile and eager:
        artifacts["compile"] = (f"torch.compile failed on this program, so it trained eagerly, which is slower: "
                                f"{eager[0].get('compile_error') or 'no error recorded'}")
    try:
        ledger_path = (prepared or {}).get("ledger") or ledger.default_ledger_path()
        digest, code_path = _store_code(code, Path(ledger_path))
        artifacts["ledger_row"] = str(ledger.record_evaluation({
            "framework": framework, "program_hash": digest, "code_path": code_path, "verdict": verdict,
            "reason": reason.value, "message": message + ("; flagged: " + "; ".join(flags) if flags else ""),
            "combined_score": score, "metrics": metrics,
            "fingerprint": fp, "profile": profile.name if profile else None,
            "seed": profile.train_seed if profile else None, "wall_s": metrics["eval_wall_s"], "timings": timings or {},
            "execution": execution or {}, "runs": runs or [],
        }, ledger_path))
    except Exception as exc:  # noqa: BLE001 - the score still goes back; the failure is visible in artifacts
        artifacts["ledger_error"] = f"{type(exc).__name__}: {exc}"
    return _wrap(metrics, artifacts)


def _execution_text(execution: dict) -> str:
    if execution.get("reused"):
        return f"{execution.get('executor', '?')}: nothing ran; reused {execution['reused']}"
    where = execution.get("host", "?")
    if execution.get("executor") == "ray":
        where = f"Ray node {execution.get('node_ip', '?')} ({where})"
    text = f"{execution.get('executor', '?')}: {where}, attempt {execution.get('attempts', 1)}"
    if execution.get("confinement"):
        text += f"; confinement: {execution['confinement']}"
    for lost in execution.get("lost", []):
        text += f"\nan earlier attempt lost its worker (retried, not the candidate's fault): {lost[:300]}"
    return text


@dataclass
class Evaluation:
    """What ``evaluate`` returns where OpenEvolve is not installed (``harness gpu-check``'s GPU machine): the two
    fields of OpenEvolve's ``EvaluationResult``, so that the reason and the message are not lost."""

    metrics: dict
    artifacts: dict


def _wrap(metrics: dict, artifacts: dict):
    try:
        from openevolve.evaluation_result import EvaluationResult
    except ImportError:
        return Evaluation(metrics=metrics, artifacts=artifacts)
    return EvaluationResult(metrics=metrics, artifacts=artifacts)


NESTED_TOO_DEEPLY = ("the block is nested too deeply to be parsed and checked (a very long chain of operators or "
                     "calls): split long expressions into several statements")


def static_gate(framework: str, spliced: str) -> tuple[Reason, str] | None:
    """The policy check of a spliced program: None, or (SYNTAX or POLICY, the message)."""
    fw = get_framework(framework)
    pristine = fw.seed_source()
    parts = program.split(spliced)
    try:
        report = check_block(parts.block, fw.class_name, ATTENTION_KWARGS, module_aliases(parts.head),
                             line_offset=program.block_offset(pristine) - 1)
    except SyntaxError as exc:
        return Reason.SYNTAX, f"line {(exc.lineno or 0) + program.block_offset(pristine) - 1}: {exc.msg}"
    except RecursionError:  # Python's parser, or the policy's walk over the tree, past the interpreter's depth
        return Reason.SYNTAX, NESTED_TOO_DEEPLY
    return None if report.ok else (Reason.POLICY, "; ".join(report.violations[:8]))


def check_program_file(path, framework: str | None = None) -> tuple[str, str]:
    """(framework, text) of a program named on a command line, or a ConfigError that says what is wrong with it:
    no such file, no EVOLVE-BLOCK markers, no attention class of a known framework, a syntax error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    text = path.read_text(errors="replace")
    try:
        parts = program.split(text)
    except program.FrozenRegionError as exc:
        if not any(program.MARKER_LIKE.match(line) for line in text.splitlines()):
            raise ConfigError(f"{path}: no EVOLVE-BLOCK markers: not a harness program (start from "
                              "initial_programs/<framework>.py and edit between its markers)") from None
        raise ConfigError(f"{path}: {exc}") from None
    framework = framework or framework_of(text)
    if framework is None:
        raise ConfigError(f"{path}: no attention class of a known framework ("
                          f"{', '.join(fw.class_name for fw in FRAMEWORKS.values())}): pass --framework")
    get_framework(framework)
    try:
        compile(parts.block, str(path), "exec")
    except SyntaxError as exc:
        line = (exc.lineno or 0) + parts.head.count("\n")
        raise ConfigError(f"{path}: syntax error at line {line}: {exc.msg}") from None
    except RecursionError:
        raise ConfigError(f"{path}: {NESTED_TOO_DEEPLY}") from None
    return framework, text


def _die_with_openevolve() -> None:
    """In OpenEvolve's worker processes (multiprocessing children), die with openevolve-run: a killed run would
    otherwise leave its workers evaluating on, as orphans that ignore SIGTERM. Never in a command's own process."""
    import multiprocessing

    global _TIED_TO_PARENT
    if not _TIED_TO_PARENT and multiprocessing.parent_process() is not None:
        from harness.trusted.process_lifetime import die_with_parent

        die_with_parent(os.getppid())
        _TIED_TO_PARENT = True


_TIED_TO_PARENT = False


def evaluate(framework: str, program_path: str, profile: Profile | None = None, ledger_path: Path | None = None,
             executor_name: str | None = None):
    """Score one candidate file. Never raises; every rejection scores exactly 0.0 with a reason.
    ``executor_name``: local or ray (default ``$HARNESS_EXECUTOR``, else local)."""
    started = time.time()
    _die_with_openevolve()
    try:
        return _evaluate(framework, program_path, profile, ledger_path, started, executor_name)
    except Exception as exc:  # noqa: BLE001 - fail closed
        return _result(framework, Reason.INFRASTRUCTURE, f"the evaluator itself failed: {type(exc).__name__}: {exc}",
                       details=traceback.format_exc(), started=started)


def _evaluate(framework: str, program_path: str, profile: Profile | None, ledger_path: Path | None, started: float,
              executor_name: str | None):
    try:
        prepared = prepare(framework, profile, ledger_path, executor_name)
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
    problem = static_gate(framework, spliced)
    if problem:
        return _result(framework, problem[0], problem[1], code=spliced, **common)
    if spliced == pristine:
        return _pristine_seed(framework, spliced, prepared, started)

    request = sandbox_request(fw.name, profile, prepared["ledger"], source=spliced)
    run = executor.run_sandbox("evaluate", request, profile.hard_limit_s, profile.memory_cap_mib,
                               executor=prepared["executor"], baseline_limit_s=baseline_limit_s(profile))
    result, log = run.result, run.log
    baselines = dict(request["baselines"])
    if run.new_baseline:  # a worker kind seen for the first time: its baseline, trained on it, joins the ledger
        try:
            new = objective_from_untrusted(run.new_baseline["record"], profile)
        except MalformedRecord as exc:
            return _result(framework, Reason.INFRASTRUCTURE, f"the baseline trained on a new worker kind has a "
                           f"malformed training record: {exc}", details=log, code=spliced, **common)
        ledger.put_baseline(run.new_baseline["fingerprint"]["id"], fw.name, profile.objective, new, prepared["ledger"])
        baselines[run.new_baseline["fingerprint"]["id"]] = new
    reported_fp = _small((result or {}).get("fingerprint"))
    common.update(code=spliced, execution=run.execution,
                  fingerprint=reported_fp if isinstance(reported_fp, dict) else None)
    if run.outcome == "infrastructure":
        return _result(framework, Reason.INFRASTRUCTURE, run.error, details=log, **common)
    if run.outcome == "timeout":
        return _result(framework, Reason.TIMEOUT, f"the evaluation was killed after its hard limit of "
                       f"{profile.hard_limit_s:.0f} s", details=log, **common)
    if run.outcome == "memory":
        return _result(framework, Reason.MEMORY, f"the sandbox exceeded its memory cap of {profile.memory_cap_mib} MiB "
                       "and was killed", details=log, **common)
    if run.outcome == "disk":
        return _result(framework, Reason.POLICY, f"the sandbox: {run.error}", details=log, **common)
    if result is None:
        return _result(framework, Reason.CRASH, "the sandbox process died without a result (killed by a signal "
                       "or hard crash)", details=log, **common)
    try:
        reason = Reason(result.get("reason", "crash"))
    except (ValueError, TypeError):
        return _result(framework, Reason.TAMPERING, f"the sandbox reported an unknown reason {result.get('reason')!r}",
                       details=log, **common)
    # Whatever else the result holds came from the sandbox's process: kept only in the shapes the ledger stores.
    metrics = gate_metrics(result.get("metrics"))
    timings = {k: v for k, v in _float_metrics(_small(result.get("timings")) or {}).items() if len(k) <= 64}
    message, traceback_text = str(result.get("message", "")), str(result.get("traceback", ""))
    details = "\n".join(filter(None, [traceback_text, log if reason not in (Reason.OK,) else ""]))
    if reason != Reason.OK:  # a training that failed (diverged, non-finite, pruned) reports its runs so far
        return _result(framework, reason, message, metrics=metrics, details=details, timings=timings,
                       runs=reported_runs(result.get("runs"), len(profile.ladder)), **common)
    if reported_fp is None or "objective" not in result:
        return _result(framework, Reason.TAMPERING, "the sandbox's result claims success without the fingerprint "
                       "and the training record the sandbox always reports", details=log, **common)
    fingerprint_id = reported_fp.get("id")
    if fingerprint_id not in baselines:
        return _result(framework, Reason.INFRASTRUCTURE, f"no baseline for the fingerprint {fingerprint_id!r} the "
                       "sandbox reported", details=log, **common)
    try:
        objective = objective_from_untrusted(result.get("objective"), profile)
        baseline = objective_from_untrusted(baselines[fingerprint_id], profile)
    except MalformedRecord as exc:
        return _result(framework, Reason.TAMPERING, f"the sandbox handed back a malformed training record: {exc}",
                       details=log, **common)
    if {r["scored_split_sha256"] for r in objective["runs"]} != {r["scored_split_sha256"] for r in baseline["runs"]}:
        return _result(framework, Reason.TAMPERING, "the scored split on disk is not the one the baseline was scored "
                       "on: the token cache was modified after the baseline was measured; delete the token cache "
                       "folder and restart the run", details=log, **common)
    problem = parity_violation(objective, baseline, profile)
    if problem:
        return _result(framework, Reason.PARAM_PARITY, problem, metrics=metrics, details=log, **common)
    value, flags = score(objective, baseline, profile)
    if not math.isfinite(value):
        return _result(framework, Reason.NONFINITE, "the objective is not finite", metrics=metrics, **common)
    metrics.update(objective_metrics(objective))
    return _result(framework, Reason.OK, "valid", score=value, metrics=metrics, details=details, flags=flags,
                   timings=timings, runs=typed_runs(objective["runs"]), **common)


def _pristine_seed(framework: str, code: str, prepared: dict, started: float):
    """The pristine seed's result is its baseline's. The preparation trained exactly this program at this budget and
    the trusted scorer scored it; trained again, it gives the same objective (bit for bit on the CPU, within CUDA's
    nondeterminism on a GPU), at the cost of one more training at the profile's whole budget per framework and run:
    OpenEvolve evaluates its initial program first. A seed changed in any way, a comment included, trains."""
    baseline, profile = prepared["baseline"], prepared["profile"]
    value, flags = score(baseline, baseline, profile)
    execution = {"executor": prepared["executor"], "reused": "the baseline's training and scoring"}
    return _result(framework, Reason.OK, "valid: the pristine seed, scored by its baseline's own training and scoring "
                   "(not trained again)", score=value, metrics=objective_metrics(baseline), flags=flags,
                   prepared=prepared, code=code, started=started, execution=execution,
                   runs=typed_runs(baseline["runs"]))


def make_evaluator(framework: str):
    """The ``evaluate(program_path)`` of one framework. Preparing at import time makes configuration
    errors stop the OpenEvolve run at start instead of being scored as candidate failures. A worker process ties
    its life to openevolve-run here, as soon as it loads the evaluator."""
    _die_with_openevolve()
    prepare(framework)

    def evaluate_program(program_path: str):
        return evaluate(framework, program_path)

    evaluate_program.__name__ = "evaluate"
    return evaluate_program
