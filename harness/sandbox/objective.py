"""Training what the objective needs, at the profile's full horizon: every rung it names, in sequence or at once.
Each rung's trained weights go to a file (``weights_dir``); its final loss is measured by the trusted scorer
(:mod:`harness.scorer`), and the fitness and the score are computed by :mod:`harness.trusted.scoring`.

With ``profile.concurrent_rungs`` the rungs train at the same time, each in its own spawned process on the
same device (:func:`train_rungs_concurrently`). A child re-creates the attention class from the program's
source text with ``harness.sandbox.loader.load_attention``, exactly as the sandbox did; classes are never pickled.
Every rung is the same fresh ``train()`` call it would be in sequence, so the records are the same; a
failure is reported exactly as the sequential loop reports it (the first failing rung in ladder order).
"""

from __future__ import annotations

import mmap
import multiprocessing
import multiprocessing.connection
import os
import pickle
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from harness.trusted.profiles import Profile
from harness.trusted.scoring import rungs_for
from harness.sandbox.train import save_weights, train

DEFAULT_PROGRAM_FILENAME = "evolved_program.py"


class TrainingFailure(Exception):
    def __init__(self, status: str, message: str, runs: list[dict]):
        super().__init__(message)
        self.status, self.message, self.runs = status, message, runs


class RungProcessError(RuntimeError):
    """A rung's training process raised something that cannot be re-raised as itself, or died without a result."""


def run_objective(attention_cls: type, profile: Profile, data, seed: int | None = None, device: str | None = None,
                  log=None, *, source: str | None = None, filename: str | None = None,
                  concurrent: bool | None = None, rungs: list[tuple] | None = None,
                  prune_above: dict[int, float] | None = None,
                  weights_dir: Path | None = None) -> tuple[dict, object]:
    """Train what the objective needs; returns ({"runs": [TrainResult.to_dict() of each rung]}, the last trained
    model). Raises TrainingFailure when a run stops on a non-finite or diverging loss. With ``weights_dir``, each
    finished rung's weights are saved there as ``rung<i>.pt`` (:func:`weights_file`).

    ``concurrent`` (default ``profile.concurrent_rungs``) trains the rungs at once in spawned processes,
    which re-create the class from the program's ``source`` (loaded under ``filename``); without the
    source the rungs train one after another. ``rungs`` (default: what the objective needs) may add rungs,
    e.g. the whole ladder for a scaling-law fit whatever the objective; the record then also holds that fit.
    ``prune_above``: see ``train``; the rungs then train one after another."""
    rungs = list(rungs) if rungs is not None else rungs_for(profile)
    concurrent = profile.concurrent_rungs if concurrent is None else concurrent
    concurrent = concurrent and not prune_above
    if concurrent and len(rungs) > 1 and source is not None:
        outcomes = train_rungs_concurrently(source, filename or DEFAULT_PROGRAM_FILENAME, profile, rungs, data,
                                            seed=seed, device=device, log=log, keep_last_model=True,
                                            attention_cls=attention_cls, weights_dir=weights_dir)
        runs = []
        for outcome in outcomes:
            if outcome.error is not None:
                raise outcome.error
            runs.append(outcome.record)
            if outcome.record["status"] != "ok":
                _raise_failure(outcome.record, runs)
        model = outcomes[-1].model
    else:
        runs, model = [], None
        for i, rung in enumerate(rungs):
            result = train(attention_cls, profile, rung, data, seed=seed, device=device, log=log, keep_model=True,
                           prune_above=prune_above)
            runs.append(result.to_dict())
            model = result.model
            if result.status != "ok":
                _raise_failure(runs[-1], runs)
            if weights_dir is not None:
                save_weights(model, weights_file(weights_dir, i))
    return {"runs": runs}, model


def weights_file(weights_dir, index: int) -> Path:
    """Where rung ``index`` (in the order trained) leaves its weights for the scorer."""
    return Path(weights_dir) / f"rung{index}.pt"


def _raise_failure(run: dict, runs: list[dict]):
    if run["status"] == "pruned":
        raise TrainingFailure("pruned", f"training at rung {tuple(run['rung'])} pruned at step {run['steps_done']}: "
                              "its best validation loss was above the median of the finished trials", runs)
    where = f" at step {run['nonfinite_step']}" if run["nonfinite_step"] else f" by step {run['steps_done']}"
    raise TrainingFailure(run["status"], f"training at rung {tuple(run['rung'])} stopped: loss {run['status']}{where}",
                          runs)


# ----------------------------------------------------------------------------------------------------------------
# Concurrent rungs


@dataclass
class RungOutcome:
    rung: tuple
    record: dict | None = None  # TrainResult.to_dict()
    error: BaseException | None = None  # what the rung's train() raised, re-raised in the parent
    model: object = None  # the trained model, rebuilt from the child's state_dict (keep_last_model)
    cancelled: bool = False  # stopped because an earlier rung (in ladder order) failed
    process_wall_s: float = 0.0  # wall seconds of the rung's process: interpreter start, imports, training
    state_dict: dict | None = field(default=None, repr=False)  # the child's trained weights, until rebuilt

    @property
    def failed(self) -> bool:
        return self.error is not None or (self.record is not None and self.record["status"] != "ok")


@dataclass(frozen=True)
class _RungData:
    train: object
    monitor: object
    vocab_size: int


def _array_spec(array):
    """A memory-mapped array travels as its file (the train split is hundreds of MB), anything else by value."""
    import numpy as np

    if isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and array.filename \
            and array.flags.c_contiguous and os.path.isfile(array.filename):
        return ("memmap", array.filename, array.dtype.str, int(array.offset), tuple(array.shape))
    return ("array", np.asarray(array))


def _open_array(spec):
    import numpy as np

    if spec[0] == "memmap":
        _, path, dtype, offset, shape = spec
        return np.memmap(path, dtype=np.dtype(dtype), mode="r", offset=offset, shape=shape)
    return spec[1]


def _child_log(prefix: str):
    def log(message: str) -> None:
        print(f"[{prefix} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    return log


def _rung_worker(spec: dict, result_path: str) -> None:
    """Entry point of one rung's process (spawned: a fresh interpreter)."""
    from harness.trusted.process_lifetime import die_with_parent, exit_now

    die_with_parent(spec["parent_pid"])  # a sandbox killed with its worker must not leave its rungs training
    import torch

    started = time.perf_counter()
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    payload: dict = {}
    try:
        from harness.sandbox import snapshot
        from harness.sandbox.loader import load_attention

        before = snapshot.take()
        attention_cls = load_attention(spec["source"], spec["filename"])
        data = _RungData(_open_array(spec["train"]), _open_array(spec["monitor"]), spec["vocab_size"])
        log = _child_log("rung-process") if spec["log"] else None
        result = train(attention_cls, spec["profile"], spec["rung"], data, seed=spec["seed"], device=spec["device"],
                       log=log, keep_model=spec["keep_model"] or bool(spec["weights_path"]))
        snapshot.check(before, f"training rung {tuple(spec['rung'])}")
        payload["record"] = result.to_dict()
        if spec["weights_path"] and result.status == "ok":
            save_weights(result.model, spec["weights_path"])
        if spec["keep_model"]:
            payload["state_dict"] = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent as data
        payload["error_text"] = f"{type(exc).__name__}: {exc}"
        payload["traceback"] = traceback.format_exc()
        try:
            payload["error"] = pickle.dumps(exc)
        except Exception:  # noqa: BLE001 - e.g. an exception class defined by the program itself
            pass
    payload["process_wall_s"] = time.perf_counter() - started
    tmp = result_path + ".tmp"
    torch.save(payload, tmp)
    os.replace(tmp, result_path)
    exit_now(0)  # the parent waits for this process to end, and torch's teardown would only delay it


@contextmanager
def environ_with(values: dict):
    """``os.environ`` with ``values`` set while in the block (processes started there inherit them), restored after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _read_outcome(rung: tuple, path: Path, exitcode: int | None) -> RungOutcome:
    import torch

    if not path.exists():
        return RungOutcome(rung, error=RungProcessError(
            f"the training process of rung {tuple(rung)} died without a result (exit code {exitcode})"))
    payload = torch.load(path, weights_only=True)
    outcome = RungOutcome(rung, record=payload.get("record"), process_wall_s=payload.get("process_wall_s", 0.0))
    if "error_text" in payload:
        error = None
        if "error" in payload:
            try:
                error = pickle.loads(payload["error"])  # noqa: S301 - our own child, in the sandbox
            except Exception:  # noqa: BLE001
                error = None
        if not isinstance(error, BaseException):
            error = RungProcessError(payload["error_text"])
        error.__cause__ = RungProcessError(f"in the process training rung {tuple(rung)}:\n{payload['traceback']}")
        outcome.error = error
    outcome.state_dict = payload.get("state_dict")
    return outcome


def train_rungs_concurrently(source: str, filename: str, profile: Profile, rungs: list[tuple], data,
                             seed: int | None = None, device: str | None = None, log=None,
                             keep_last_model: bool = True, stop_on_failure: bool = True,
                             attention_cls: type | None = None, weights_dir: Path | None = None) -> list[RungOutcome]:
    """Train each rung in its own spawned process, all at once on one device; one RungOutcome per rung, in
    ladder order. With ``stop_on_failure``, a failing rung stops the rungs after it in ladder order (their
    results cannot change what is reported) while the rungs before it finish, as in a sequential loop.
    ``keep_last_model`` returns the last rung's trained model, rebuilt on the training device from its state
    (``attention_cls``, or the class re-created from ``source``)."""
    import torch

    ctx = multiprocessing.get_context("spawn")
    n = len(rungs)
    threads = torch.get_num_threads()
    cores = os.cpu_count() or 1
    child_env = {"PYTHONUNBUFFERED": "1"}
    if "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ:
        child_env["TORCHINDUCTOR_COMPILE_THREADS"] = str(max(1, cores // n))
    common = {"source": source, "filename": filename, "profile": profile, "seed": seed, "device": device,
              "train": _array_spec(data.train), "monitor": _array_spec(data.monitor), "vocab_size": data.vocab_size,
              "threads": threads, "log": log is not None, "parent_pid": os.getpid()}
    outcomes: list[RungOutcome | None] = [None] * n
    procs: dict[int, tuple] = {}
    with tempfile.TemporaryDirectory(prefix="harness-rungs-") as tmp:
        try:
            with environ_with(child_env):
                for i, rung in enumerate(rungs):
                    spec = {**common, "rung": tuple(rung), "keep_model": keep_last_model and i == n - 1,
                            "weights_path": str(weights_file(weights_dir, i)) if weights_dir is not None else None}
                    path = Path(tmp) / f"rung{i}.pt"
                    proc = ctx.Process(target=_rung_worker, args=(spec, str(path)), name=f"harness-rung-{i}")
                    proc.start()
                    procs[i] = (proc, path)
            if log:
                log(f"training {n} rungs concurrently on {device or profile.device}: "
                    + ", ".join(f"{tuple(r)} pid {procs[i][0].pid}" for i, r in enumerate(rungs)))
            pending = set(range(n))
            while pending:
                sentinels = {procs[i][0].sentinel: i for i in pending}
                for sentinel in multiprocessing.connection.wait(list(sentinels)):
                    i = sentinels[sentinel]
                    proc, path = procs[i]
                    proc.join()
                    pending.discard(i)
                    outcomes[i] = _read_outcome(tuple(rungs[i]), path, proc.exitcode)
                    if stop_on_failure and outcomes[i].failed:
                        for j in sorted(pending):
                            if j > i:
                                _stop(procs[j][0])
                                pending.discard(j)
                                outcomes[j] = RungOutcome(tuple(rungs[j]), cancelled=True)
        finally:
            for proc, _ in procs.values():
                if proc.is_alive():
                    _stop(proc)
    last = outcomes[-1]
    if keep_last_model and last.state_dict is not None:
        last.model = _rebuild_model(attention_cls, source, filename, profile, last.rung, data, seed, device,
                                    last.state_dict)
    for outcome in outcomes:
        outcome.state_dict = None
    return outcomes


def _stop(proc) -> None:
    proc.terminate()
    proc.join(10)
    if proc.is_alive():
        proc.kill()
        proc.join()


def _rebuild_model(attention_cls, source, filename, profile, rung, data, seed, device, state):
    import torch

    from harness.scaffold import build_model

    if attention_cls is None:
        from harness.sandbox.loader import load_attention

        attention_cls = load_attention(source, filename)
    seed = profile.train_seed if seed is None else seed
    with torch.random.fork_rng(devices=[]):
        model = build_model(attention_cls, rung, data.vocab_size, profile.context_len_tokens, profile.dropout, seed)
    model.load_state_dict(state)
    return model.to(torch.device(device or profile.device)).train()
