"""The sandbox entry point: the only place a candidate's code ever runs.

    python -m harness.sandbox {prepare|evaluate|objective|forward} REQUEST.json RESULT.json

``prepare`` checks the device and the data, computes the fingerprint, and trains the pristine seed
as the baseline when the request carries none for that fingerprint. ``evaluate`` runs the dynamic gate,
the training, and the post-training leak test for one spliced program. ``objective`` trains one spliced
program with a given seed and hyperparameter overrides (``harness validate``). Each writes one JSON record to
RESULT.json and nothing else: what a candidate prints to stdout is never read. The three training modes hand back
each rung's trained tensors in ``request["weights_dir"]``, and never see the scored split: their curves use the
monitoring split, and the final loss is measured afterwards by the trusted scorer (``harness.scorer``).

``forward`` is the scorer's forward-only pass: in one child process per part of the windows the scorer chose, it
loads the trained tensors into the program's model and writes their hidden states. It never sees a target.

The request is plain JSON and self-contained: the candidate's source as text, the profile by name, and the
known baselines keyed by fingerprint id. The sandbox reads no file of the caller's, so it runs the same on
this host or on a cluster worker (harness.trusted.executor).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

from harness.sandbox.loader import PolicyViolation, load_attention
from harness.trusted.process_lifetime import die_with_parent
from harness.trusted.profiles import OVERRIDABLE, training_profile


def _profile(request: dict):
    from harness.trusted.profiles import request_profile

    return request_profile(request)


def _data(profile, prepare: bool = False):
    """The token data without the scored split, whose file is never opened here: nothing that trains may see it (and
    under Landlock it cannot: see ``confine.file_rules``). ``prepare`` (the pristine seed only) reads the text and
    builds the token cache; a process that runs a program opens what was prepared, and can read no text (nor the
    datasets cache) from which the scored split could be rebuilt."""
    from harness.data import load_token_data, open_prepared

    load = load_token_data if prepare else open_prepared
    extra = {"with_score": False} if prepare else {}
    return load(profile.data_source, profile.vocab_size, profile.val_tokens, Path(request_cache_dir()),
                profile.tokenizer_train_bytes, synthetic_stories_n=profile.synthetic_stories, **extra)


def _weights_dir(request: dict) -> Path:
    return Path(request["weights_dir"])


def request_cache_dir() -> str:
    from harness.data import default_cache_dir

    return str(default_cache_dir())


def _log(message: str) -> None:
    print(f"[sandbox {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _training_begins() -> None:
    from harness.trusted.scoring import TRAINING_BEGINS

    _log(TRAINING_BEGINS)


def prepare(request: dict) -> dict:
    from harness.data import DataError
    from harness.trusted.fingerprint import environment_fingerprint
    from harness.trusted.frameworks import get_framework
    from harness.sandbox.hardware import hardware
    from harness.sandbox.objective import TrainingFailure, run_objective
    from harness.trusted.profiles import ConfigError

    try:
        profile = _profile(request)
        if profile.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(f"profile {profile.name!r} requires CUDA and none is visible here")
        data = _data(profile, prepare=True)
    except (ConfigError, DataError) as exc:
        return {"config_error": str(exc)}
    framework = get_framework(request["framework"])
    fp = environment_fingerprint(profile, data, hardware(profile.device))
    if request.get("data_only"):  # a cluster's worker about to run a training job, which needs no baseline
        return {"fingerprint": fp, "baseline_computed": False}
    baseline = (request.get("baselines") or {}).get(fp["id"])
    computed = False
    if baseline is None:
        _log(f"training the {framework.name} baseline under fingerprint {fp['id']} ({profile.name}, {profile.objective})")
        seed_cls = load_attention(framework.seed_source(), str(framework.seed_path))
        _training_begins()
        try:
            baseline, _ = run_objective(seed_cls, profile, data, log=_log, source=framework.seed_source(),
                                        filename=str(framework.seed_path), weights_dir=_weights_dir(request))
        except TrainingFailure as exc:
            return {"config_error": f"the pristine {framework.name} seed failed to train: {exc.message}"}
        computed = True
    return {"fingerprint": fp, "baseline": baseline, "baseline_computed": computed}


def _environment(request: dict):
    """(profile, data, fingerprint, None), or a record saying why this host cannot run the request: never the
    candidate's fault, whatever broke (a missing data source on a worker, no CUDA where CUDA is needed)."""
    from harness.trusted.fingerprint import environment_fingerprint
    from harness.sandbox.hardware import hardware
    from harness.trusted.reasons import Reason

    try:
        profile = _profile(request)
        data = _data(profile)
        return profile, data, environment_fingerprint(profile, data, hardware(profile.device)), None
    except Exception as exc:  # noqa: BLE001
        return None, None, None, {"reason": Reason.INFRASTRUCTURE.value, "message": f"this host cannot run the "
                                  f"evaluation: {type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=-4)}


def evaluate(request: dict) -> dict:
    from harness.sandbox.checks import GateFailure, run_gate
    from harness.trusted.frameworks import get_framework
    from harness.sandbox.objective import TrainingFailure, run_objective
    from harness.sandbox.snapshot import RuntimeTampering
    from harness.scaffold import TensorSubclassError
    from harness.trusted.reasons import Reason

    timings: dict = {}
    start = time.perf_counter()
    profile, data, fp, failure = _environment(request)
    if failure:
        return failure
    if fp["id"] not in (request.get("baselines") or {}):
        # The executor decides: a cluster trains the baseline of a new worker kind; one host reports a changed
        # environment (code, data, software), which a restart of the campaign prepares anew.
        return {"reason": Reason.INFRASTRUCTURE.value, "baseline_missing": True, "fingerprint": fp,
                "message": f"no baseline for this environment's fingerprint {fp['id']} (known: "
                f"{sorted(request.get('baselines') or {})}): the hardware, software, data or harness code "
                "changed since the evaluator was prepared"}
    framework = get_framework(request["framework"])
    baseline_cls = load_attention(framework.seed_source(), str(framework.seed_path))
    timings["setup_s"] = time.perf_counter() - start
    result = {"fingerprint": fp, "metrics": {}, "timings": timings}
    source, candidate_cls, failure = _load_program(request)
    if failure:
        return {**result, **failure}
    tampered = _tampered("loading the program")
    if tampered:
        return {**result, **tampered}
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
    tampered = _tampered("during the gate")
    if tampered:
        return {**result, **tampered}
    train_start = time.perf_counter()
    _training_begins()
    try:
        record, model = run_objective(candidate_cls, profile, data, log=_log, source=source,
                                      filename="evolved_program.py", weights_dir=_weights_dir(request))
    except TrainingFailure as exc:
        timings["train_s"] = time.perf_counter() - train_start
        reason = Reason.NONFINITE if exc.status == "nonfinite" else Reason.DIVERGED
        return {**result, "reason": reason.value, "message": exc.message, "runs": exc.runs}
    except (TensorSubclassError, RuntimeTampering) as exc:
        timings["train_s"] = time.perf_counter() - train_start
        return {**result, "reason": Reason.POLICY.value, "message": str(exc)}
    except Exception as exc:
        timings["train_s"] = time.perf_counter() - train_start
        return {**result, "reason": Reason.CRASH.value, "message": f"training raised {type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=-4)}
    timings["train_s"] = time.perf_counter() - train_start
    leak_start = time.perf_counter()
    try:
        from harness.sandbox.checks import check_trained_leak

        result["metrics"].update(check_trained_leak(model, data.monitor, profile))
    except GateFailure as exc:
        return {**result, "reason": exc.reason.value, "message": exc.message, "runs": record["runs"]}
    tampered = _tampered("during training")
    if tampered:
        return {**result, **tampered}
    timings["leak_s"] = time.perf_counter() - leak_start
    timings["total_s"] = time.perf_counter() - start
    # No score here: the evaluator recomputes the objective from the runs and scores it outside this process.
    return {**result, "reason": Reason.OK.value, "message": "trained", "objective": record}


# What ``objective`` may override, and the type of each: the hyperparameters ``harness validate`` tunes, and
# the tuning horizon.


def objective(request: dict) -> dict:
    """Train one spliced program with a given seed and hyperparameter overrides; return the objective record.

    Used by ``harness validate`` (one call = one training job). The fingerprint is that of the profile as
    named (the overrides are recorded beside it, like the seed), so that the result can be checked against
    the evaluator's. ``rungs`` is "objective" (what the profile's objective trains), "ladder" (every
    rung, for scaling-law fits whatever the objective) or "reference" (the reference rung alone, for tuning).
    ``prune_above`` [[step, loss], ...]: a median pruner's thresholds (see ``train``); a pruned run comes
    back with reason "pruned" and its curve. ``mixing``: also measure the last trained model's token-mixing
    matrices on the first validation window (``harness.sandbox.mixing``), for the report's pattern plot."""
    from harness.sandbox.objective import TrainingFailure, run_objective
    from harness.sandbox.snapshot import RuntimeTampering
    from harness.scaffold import TensorSubclassError
    from harness.trusted.scoring import rungs_for
    from harness.trusted.reasons import Reason

    if request.get("threads"):
        import torch

        torch.set_num_threads(int(request["threads"]))
    profile, data, fp, failure = _environment(request)
    if failure:
        return failure
    if request.get("fingerprint_id") and fp["id"] != request["fingerprint_id"]:
        return {"reason": Reason.INFRASTRUCTURE.value, "message": f"the environment's fingerprint is {fp['id']}, "
                f"not the expected {request['fingerprint_id']}", "fingerprint": fp}
    unknown = sorted(set(request.get("hparams") or {}) - set(OVERRIDABLE))
    if unknown:
        return {"reason": Reason.INFRASTRUCTURE.value, "message": f"cannot override {unknown}", "fingerprint": fp}
    tuned = training_profile(request)
    seed = int(request.get("seed", profile.train_seed))
    result = {"fingerprint": fp, "seed": seed, "hparams": {k: getattr(tuned, k) for k in OVERRIDABLE}}
    source, cls, failure = _load_program(request)
    if failure:
        return {**result, **failure}
    tampered = _tampered("loading the program")
    if tampered:
        return {**result, **tampered}
    if (tuned.batch_size_seqs, tuned.eval_batch_seqs) != (profile.batch_size_seqs, profile.eval_batch_seqs):
        # The evaluator's gate saw the profile's batches; a program could spend more at a batch that only a tuned
        # job trains at. The gate again, at this job's batches (the seed's own job passes it).
        failure = _gate_at(cls, tuned, request)
        if failure:
            return {**result, **failure}
    rungs = rungs_for(profile, request.get("rungs"))
    prune_above = {int(step): float(loss) for step, loss in request.get("prune_above") or []}
    start = time.perf_counter()
    _training_begins()
    try:
        record, model = run_objective(cls, tuned, data, seed=seed, log=_log, source=source,
                                      filename="evolved_program.py", rungs=rungs, prune_above=prune_above or None,
                                      weights_dir=_weights_dir(request))
        if request.get("mixing"):
            record["mixing"] = _mixing(model, tuned, data, record["runs"][-1]["rung"], seed)
    except TrainingFailure as exc:
        if exc.status == "pruned":
            return {**result, "reason": "pruned", "runs": exc.runs, "message": exc.message}
        reason = Reason.NONFINITE if exc.status == "nonfinite" else Reason.DIVERGED
        return {**result, "reason": reason.value, "runs": exc.runs, "message": exc.message}
    except (TensorSubclassError, RuntimeTampering) as exc:
        return {**result, "reason": Reason.POLICY.value, "message": str(exc)}
    except Exception as exc:
        return {**result, "reason": Reason.CRASH.value, "message": f"training raised {type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=-4)}
    record["wall_s"] = time.perf_counter() - start
    tampered = _tampered("during training")
    if tampered:
        return {**result, **tampered}
    return {**result, "reason": Reason.OK.value, "message": "ok", "record": record}


def _gate_at(cls: type, profile, request: dict) -> dict | None:
    """The dynamic gate under ``profile`` against the framework's seed; None when it passes, else the rejection."""
    from harness.sandbox.checks import GateFailure, run_gate
    from harness.trusted.frameworks import get_framework

    framework = get_framework(request["framework"])
    baseline_cls = load_attention(framework.seed_source(), str(framework.seed_path))
    try:
        run_gate(cls, baseline_cls, profile, profile.device, log=_log)
    except GateFailure as exc:
        return {"reason": exc.reason.value, "message": f"at batch {profile.batch_size_seqs}: {exc.message}",
                "traceback": _cause(exc)}
    return _tampered("during the gate")


def _mixing(model, profile, data, rung, seed: int) -> dict:
    """The pattern plot's data; a program it cannot measure keeps its training result, with the error instead."""
    from harness.sandbox.mixing import mixing_matrices
    from harness.sandbox.train import validation_windows

    try:
        tokens = validation_windows(data.monitor, profile.context_len_tokens, next(model.parameters()).device)[0]
        return {"rung": list(rung), "seed": seed, "layers": mixing_matrices(model, tokens)}
    except Exception as exc:  # noqa: BLE001 - a drawing aid must never fail a training job
        return {"rung": list(rung), "seed": seed, "error": f"{type(exc).__name__}: {exc}"[:300]}


def forward(request: dict) -> dict:
    """The forward-only pass of the trusted scoring. ``request["parts"]`` are folders, one per part of the scorer's
    windows, each holding ``inputs.npy`` and the trained tensors in ``weights/``. This process never loads the
    program: it forks one child per part, at once, and waits for them. Each child starts from this process's state,
    before any program ran, so nothing one of them keeps reaches another; each confines itself further to its own
    folder (``_confine_to``), then runs ``forward_part`` and writes its record to ``result.json`` there. The scorer
    reads those records. This process's own says which children were confined before the program loaded
    (``confined``): each tells it through a pipe of its own, which it closes before the program loads. So a child
    that left no record failed in the harness's own set-up (``confined`` false) or in the program's hands."""
    from harness.trusted.reasons import Reason

    parent, children, told = os.getpid(), [], []
    sys.stdout.flush()
    sys.stderr.flush()
    for folder in request["parts"]:
        tell_r, tell_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child never returns into main: its record is in its folder
            code = 1
            try:
                # No descriptor of the launcher's reaches the program, none that the other part could share too
                # (an offset or a status flag carries bits), and no child may read what another told.
                os.closerange(3, tell_w)
                os.closerange(tell_w + 1, os.sysconf("SC_OPEN_MAX"))
                die_with_parent(parent)
                _confine_to(Path(folder), request)
                os.write(tell_w, b"1")
                os.close(tell_w)
                _write_result(Path(folder) / "result.json", forward_part(request, Path(folder)))
                code = 0
            except BaseException:  # noqa: BLE001 - the scorer finds no record: the forward pass died
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(tell_w)
        children.append(pid)
        told.append(tell_r)
    for pid in children:
        os.waitpid(pid, 0)
    confined = []
    for fd in told:
        confined.append(os.read(fd, 1) == b"1")
        os.close(fd)
    return {"reason": Reason.OK.value, "message": f"{len(children)} parts run", "confined": confined}


def _confine_to(folder: Path, request: dict) -> None:
    """Before the program loads in a forward child: no stdin; its output to ``folder/forward.log``, not to the
    log the other child writes; temporary files and compile caches in ``folder``; and, where the launcher applied
    Landlock, a ruleset of its own (Landlock rulesets stack: it keeps the launcher's too). That ruleset reads what
    the scorer let the forward-only sandbox read (``request["part_reads"]``: made outside, since inside /etc cannot
    be listed to name its entries), without the folder of both parts, and ``folder`` (on the CPU not POSIX shared
    memory), and writes only ``folder``, the null device
    and, on CUDA, the GPU's device files and POSIX shared memory (which the driver's check in
    ``confine.device_layers`` ran with). Where the scorer keeps
    the parts apart (``request["apart"]``), also no socket, file lock or file watch (``seccomp.apart_program``)."""
    from harness.trusted import confine
    from harness.trusted.executor import scratch_environment

    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    fd = os.open(folder / "forward.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    (folder / "tmp").mkdir(exist_ok=True)
    os.environ.update(scratch_environment(folder / "tmp"))
    import tempfile

    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    if request.get("landlock"):
        device = _profile(request).device
        reads = [*request["part_reads"], str(folder)]
        gpu = [*confine.gpu_device_files(), confine.CUDA_SHARED_MEMORY] if device == "cuda" else []
        confine.apply_landlock(reads, [str(folder), "/dev/null", *gpu])
    if request.get("apart"):
        from harness.trusted import seccomp

        seccomp.apply(seccomp.apart_program())


def forward_part(request: dict, folder: Path) -> dict:
    """For each rung in ``request["rungs"]``, the program's model, built as the training built it, with the trained
    parameters of ``folder/weights``, in eval mode and float32 without autocast, run on the token windows of
    ``folder/inputs.npy`` (an int32 array [windows, length]) in their order, ``batch_size`` at a time. It writes the
    hidden states (float32 [windows, length, d_model]) to ``folder/hidden/rung<i>.npy``. The scorer checks them and
    computes the loss; nothing this process says about them is believed.

    The buffers and frozen parameters are those construction makes, never the trained ones, which the scorer does
    not hand over: what a forward pass wrote into them during training (a hand-made update at every step, trained
    weights the parameter count never saw) does not reach the score. They are every entry of the model's state
    that is not a trained parameter, and go to ``folder/constructed/rung<i>.pt``, for the scorer to compare with the
    trained ones and name the change."""
    import numpy as np
    import torch

    from harness.sandbox.objective import weights_file
    from harness.sandbox.train import CPU_TRAIN_THREADS
    from harness.scaffold import TensorSubclassError, build_model, plain_tensor
    from harness.trusted.reasons import Reason

    profile = training_profile(request)
    seed = int(request.get("seed", profile.train_seed))  # the training's: construction draws its random tensors
    device = torch.device(profile.device)
    if device.type == "cpu":
        torch.set_num_threads(CPU_TRAIN_THREADS)
    else:
        # TF32 would make a window's states depend on which other windows share its batch beyond the canary
        # test's tolerance.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    source, cls, failure = _load_program(request)
    if failure:
        return failure
    tampered = _tampered("loading the program")
    if tampered:
        return tampered
    inputs = np.load(folder / "inputs.npy", allow_pickle=False)
    batch, (n, length) = int(request["batch_size"]), inputs.shape
    out_dir, constructed_dir = folder / "hidden", folder / "constructed"
    out_dir.mkdir(parents=True, exist_ok=True)
    constructed_dir.mkdir(parents=True, exist_ok=True)
    try:
        for i, rung in enumerate(request["rungs"]):
            pack = torch.load(weights_file(folder / "weights", i), weights_only=True, map_location="cpu")
            model = build_model(cls, tuple(rung), profile.vocab_size, profile.context_len_tokens, profile.dropout,
                                seed)
            constructed = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()
                           if k not in pack["params"] and k != "lm_head.weight"}
            torch.save(constructed, constructed_dir / f"rung{i}.pt")
            model.load_state_dict({**pack["params"], **constructed, "lm_head.weight": pack["params"]["tok_emb.weight"]})
            model.to(device).eval()
            hidden = np.lib.format.open_memmap(out_dir / f"rung{i}.npy", mode="w+", dtype=np.float32,
                                               shape=(n, length, rung[0]))
            with torch.no_grad():
                for start in range(0, n, batch):
                    x = torch.from_numpy(inputs[start : start + batch].astype(np.int64)).to(device)
                    h = plain_tensor(model.hidden(x), "the model's hidden states")
                    hidden[start : start + batch] = h.float().cpu().numpy()
            hidden.flush()
            del hidden, model
    except TensorSubclassError as exc:
        return {"reason": Reason.POLICY.value, "message": str(exc)}
    except Exception as exc:  # noqa: BLE001 - reported to the scorer as data
        return {"reason": Reason.CRASH.value, "message": f"the forward pass of the trained model raised "
                f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=-4)}
    return _tampered("during the forward pass") or {"reason": Reason.OK.value, "message": "hidden states written"}


def _load_program(request: dict) -> tuple[str | None, type | None, dict | None]:
    """(source, ATTENTION class, None), or (None, None, the crash record) when the program will not load."""
    from harness.trusted.reasons import Reason

    try:
        source = request["source"]
        return source, load_attention(source, "evolved_program.py"), None
    except PolicyViolation as exc:
        return None, None, {"reason": Reason.POLICY.value, "message": str(exc)}
    except Exception as exc:
        return None, None, {"reason": Reason.CRASH.value, "message": f"loading the program failed: {type(exc).__name__}: {exc}",
                            "traceback": traceback.format_exc(limit=-4)}


_SNAPSHOT: dict = {}  # what harness.sandbox.snapshot.take() saw before any program loaded


def _tampered(stage: str) -> dict | None:
    """The policy record when the program changed torch or the harness so far; None otherwise."""
    from harness.sandbox.snapshot import RuntimeTampering, check
    from harness.trusted.reasons import Reason

    try:
        check(_SNAPSHOT, stage)
    except RuntimeTampering as exc:
        return {"reason": Reason.POLICY.value, "message": str(exc)}
    return None


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__
    return "".join(traceback.format_exception(cause, limit=-4)) if cause else ""


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    mode, request_path, result_path = (argv or sys.argv[1:])[:3]
    from harness.sandbox import snapshot

    _SNAPSHOT.update(snapshot.take())
    if mode == "forward" and not sys.stdin.readline():
        # The scorer starts this process ahead, while the training runs, and sends one line when the request is
        # ready; end of file means there is nothing to score.
        return 0
    request = json.loads(Path(request_path).read_text())
    cap_file_size(request.get("disk_cap_bytes"))
    try:
        result = {"prepare": prepare, "evaluate": evaluate, "objective": objective, "forward": forward}[mode](request)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as data
        result = {"reason": "crash", "message": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    _write_result(Path(result_path), result)
    return 0


def cap_file_size(cap_bytes: int | None) -> None:
    """Refuse this process and its children any file larger than ``cap_bytes`` (the sandbox's disk cap, set by the
    trusted side: ``executor.DiskCap``), before any program loads. The hard limit too, which an unprivileged process
    cannot raise again; a write past it fails with EFBIG (Python ignores SIGXFSZ). None: no cap (``prepare``)."""
    import resource

    if cap_bytes is None:
        return
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    cap = int(cap_bytes) if hard == resource.RLIM_INFINITY else min(int(cap_bytes), hard)
    resource.setrlimit(resource.RLIMIT_FSIZE, (cap, cap))


def _write_result(path: Path, result: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, default=float))
    os.replace(tmp, path)

