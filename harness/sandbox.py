"""The sandbox entry point: the only place a candidate's code ever runs.

    python -m harness.sandbox {prepare|evaluate} REQUEST.json RESULT.json

``prepare`` checks the device and the data, computes the fingerprint, and trains the pristine seed
as the baseline when the ledger has none for that fingerprint. ``evaluate`` runs the dynamic gate,
the training, and the post-training leak test for one spliced program. Both write one JSON record to
RESULT.json and nothing else: what a candidate prints to stdout is never read.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
import types
from pathlib import Path


def load_attention(source: str, filename: str):
    """Execute a (spliced) program as a fresh module and return its ATTENTION class."""
    module = types.ModuleType("evolved_program")
    module.__file__ = filename
    exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 - this is the sandbox
    return module.ATTENTION


def _profile(request: dict):
    from harness.profiles import get_profile

    return get_profile(request["profile"], objective=request["objective"], data_source=request["data_source"])


def _data(profile):
    from harness.data import load_token_data

    return load_token_data(
        profile.data_source, profile.vocab_size, profile.val_tokens, Path(request_cache_dir()),
        profile.tokenizer_train_bytes, synthetic_stories_n=profile.synthetic_stories,
    )


def request_cache_dir() -> str:
    from harness.data import default_cache_dir

    return str(default_cache_dir())


def _log(message: str) -> None:
    print(f"[sandbox {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def prepare(request: dict) -> dict:
    from harness import ledger
    from harness.data import DataError
    from harness.fingerprint import environment_fingerprint
    from harness.frameworks import get_framework
    from harness.objective import TrainingFailure, run_objective
    from harness.profiles import ConfigError

    try:
        profile = _profile(request)
        if profile.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(f"profile {profile.name!r} requires CUDA and none is visible here")
        data = _data(profile)
    except (ConfigError, DataError) as exc:
        return {"config_error": str(exc)}
    framework = get_framework(request["framework"])
    fp = environment_fingerprint(profile, data)
    baseline = ledger.get_baseline(fp["id"], framework.name, profile.objective, request["ledger"])
    computed = False
    if baseline is None:
        _log(f"training the {framework.name} baseline under fingerprint {fp['id']} ({profile.name}, {profile.objective})")
        seed_cls = load_attention(framework.seed_source(), str(framework.seed_path))
        try:
            baseline, _ = run_objective(seed_cls, profile, data, log=_log)
        except TrainingFailure as exc:
            return {"config_error": f"the pristine {framework.name} seed failed to train: {exc.message}"}
        computed = True
    return {"fingerprint": fp, "baseline": baseline, "baseline_computed": computed}


def evaluate(request: dict) -> dict:
    from harness.checks import GateFailure, run_gate
    from harness.fingerprint import environment_fingerprint
    from harness.frameworks import get_framework
    from harness.objective import TrainingFailure, run_objective, score
    from harness.reasons import Reason

    timings: dict = {}
    start = time.perf_counter()
    profile = _profile(request)
    data = _data(profile)
    fp = environment_fingerprint(profile, data)
    if fp["id"] != request["fingerprint_id"]:
        return {"reason": Reason.INFRASTRUCTURE.value, "message": f"the environment's fingerprint changed from "
                f"{request['fingerprint_id']} to {fp['id']} since the baseline was prepared", "fingerprint": fp}
    framework = get_framework(request["framework"])
    baseline_cls = load_attention(framework.seed_source(), str(framework.seed_path))
    timings["setup_s"] = time.perf_counter() - start
    result = {"fingerprint": fp, "metrics": {}, "timings": timings}
    try:
        source = Path(request["program"]).read_text()
        candidate_cls = load_attention(source, "evolved_program.py")
    except Exception as exc:
        return {**result, "reason": Reason.CRASH.value, "message": f"loading the program failed: "
                f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=-4)}
    try:
        gate_start = time.perf_counter()
        metrics, gate_timings = run_gate(candidate_cls, baseline_cls, profile, profile.device, log=_log)
        timings["gate_s"] = time.perf_counter() - gate_start
        timings.update({f"gate_{k}_s": v for k, v in gate_timings.items()})
        result["metrics"].update(metrics)
    except GateFailure as exc:
        timings["gate_s"] = time.perf_counter() - gate_start
        return {**result, "reason": exc.reason.value, "message": exc.message,
                "metrics": {**result["metrics"], **exc.details}, "traceback": _cause(exc)}
    train_start = time.perf_counter()
    try:
        record, model = run_objective(candidate_cls, profile, data, log=_log)
    except TrainingFailure as exc:
        timings["train_s"] = time.perf_counter() - train_start
        reason = Reason.NONFINITE if exc.status == "nonfinite" else Reason.DIVERGED
        return {**result, "reason": reason.value, "message": exc.message, "runs": exc.runs}
    except Exception as exc:
        timings["train_s"] = time.perf_counter() - train_start
        return {**result, "reason": Reason.CRASH.value, "message": f"training raised {type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=-4)}
    timings["train_s"] = time.perf_counter() - train_start
    leak_start = time.perf_counter()
    try:
        from harness.checks import check_trained_leak

        result["metrics"].update(check_trained_leak(model, data.val, profile))
    except GateFailure as exc:
        return {**result, "reason": exc.reason.value, "message": exc.message, "runs": record["runs"]}
    timings["leak_s"] = time.perf_counter() - leak_start
    value, flags = score(record, request["baseline"], profile)
    if not math.isfinite(value):
        return {**result, "reason": Reason.NONFINITE.value, "message": "the objective is not finite"}
    timings["total_s"] = time.perf_counter() - start
    return {**result, "reason": Reason.OK.value, "message": "valid", "combined_score": value, "flags": flags,
            "objective": record}


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__
    return "".join(traceback.format_exception(cause, limit=-4)) if cause else ""


def main(argv: list[str] | None = None) -> int:
    mode, request_path, result_path = (argv or sys.argv[1:])[:3]
    request = json.loads(Path(request_path).read_text())
    try:
        result = {"prepare": prepare, "evaluate": evaluate}[mode](request)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as data
        result = {"reason": "crash", "message": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    tmp = Path(result_path).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, default=float))
    os.replace(tmp, result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
