"""The trusted scorer: the final loss of every trained rung, measured where no candidate code runs.

    python -m harness.scorer PLAN.json RESULT.json

The executor runs it on the host that trained the program, after the training sandbox has exited:
1. It reads the scored split from the token cache (``harness.data.open_cached``). The training sandbox never had
   it: its curves use the monitoring split.
2. It loads each rung's trained tensors with ``torch.load(weights_only=True)``: plain tensors, no code. It counts
   the trainable parameters, the attention's among them, and the buffers itself.
3. It builds the inputs: every scored window, canaries (a window's prefix followed by another window's
   continuation) and duplicates, in an order drawn from a secret seed, so nothing in the forward pass can tell
   which is which, in whole batches; one batch, drawn at random, runs a second time at the end.
4. It runs the forward-only sandbox (``python -m harness.sandbox forward``) under the training sandbox's
   confinement and limits, timed from here. That sandbox hands back hidden states and nothing else is believed.
5. The repeated batch must give the states it gave the first time (else ``statefulness``: the forward pass
   carries state), a duplicate in another batch those of its original (else ``batch_independence``), and a
   canary's states before its splice those of its original (else ``leak_after_training``: it reads the future).
6. The loss: the final LayerNorm and the tied head, built from the trained tensors, then the cross-entropy against
   the next tokens, summed in float64 over every scored position.

The result is plain JSON: per rung the loss and the counts, or the reason the program is rejected.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.data import DataError, open_cached, validation_windows
from harness.trusted import confine
from harness.trusted.executor import (Started, abandon, read_result, scratch_environment, start_limited, supervise,
                                      tail)
from harness.trusted.process_lifetime import die_with_parent
from harness.trusted.profiles import get_profile
from harness.trusted.reasons import Reason

# The scaffold's final norm is nn.LayerNorm(d_model) with torch's default epsilon. tests/test_scorer.py checks that
# this head reproduces the frozen model's own loss.
LAYER_NORM_EPS = 1e-5
# One canary per this many scored windows, and at least the minimum; the same for duplicates.
CANARY_EVERY, MIN_CANARIES = 16, 4
DUPLICATE_EVERY, MIN_DUPLICATES = 32, 2
SCORE_CHUNK_WINDOWS = 64  # windows whose loss is computed at a time
ATTENTION_PARAM = re.compile(r"blocks\.\d+\.attn\.")


class Rejection(Exception):
    def __init__(self, reason: Reason, message: str, details: str = ""):
        super().__init__(message)
        self.reason, self.message, self.details = reason, message, details


class Infrastructure(Exception):
    """The scoring could not run for reasons outside the program (no data, no sandbox)."""


@dataclass(frozen=True)
class Weights:
    params: dict  # trainable tensors by name (the tied head is the embedding)
    buffers: dict  # persistent buffers and frozen parameters by name

    def counts(self) -> dict:
        return {"non_embedding_params": sum(v.numel() for k, v in self.params.items() if k != "tok_emb.weight"),
                "attention_params": sum(v.numel() for k, v in self.params.items() if ATTENTION_PARAM.match(k)),
                "buffer_elements": sum(v.numel() for v in self.buffers.values())}


def load_weights(path: Path, rung: tuple, vocab_size: int) -> Weights:
    """The tensors the training sandbox left for ``rung``; Rejection(tampering) when they are not what
    ``harness.sandbox.train.save_weights`` writes."""
    d_model = rung[0]
    try:
        pack = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - a missing or hostile file is the program's doing
        raise Rejection(Reason.TAMPERING, f"the trained weights of rung {tuple(rung)} are missing or unreadable "
                        f"({type(exc).__name__})") from None
    ok = isinstance(pack, dict) and set(pack) == {"params", "buffers"} and all(
        isinstance(group, dict) and all(isinstance(k, str) and type(v) is torch.Tensor for k, v in group.items())
        for group in pack.values())
    if not ok:
        raise Rejection(Reason.TAMPERING, f"the trained weights of rung {tuple(rung)} are not the tensors the "
                        "training writes")
    params = pack["params"]
    shapes = {"tok_emb.weight": (vocab_size, d_model), "ln_final.weight": (d_model,), "ln_final.bias": (d_model,)}
    for name, shape in shapes.items():
        if name not in params or tuple(params[name].shape) != shape or params[name].dtype != torch.float32:
            raise Rejection(Reason.TAMPERING, f"the trained weights of rung {tuple(rung)} lack a float32 {name} of "
                            f"shape {shape}")
        if not torch.isfinite(params[name]).all():
            raise Rejection(Reason.NONFINITE, f"the trained {name} of rung {tuple(rung)} is not finite")
    return Weights(params, pack["buffers"])


@dataclass(frozen=True)
class Layout:
    """Where each window went in the shuffled inputs: row r of the unshuffled stack (scored windows, canaries, then
    duplicates) sits at ``position[r]``. The inputs fill whole batches, and end with a second copy of one of them
    (``repeated_batch``), run last."""

    inputs: np.ndarray  # int32 [rows, length]: shuffled rows, then the repeated batch
    position: np.ndarray  # [rows of the stack]
    n_scored: int
    canaries: list  # (original window, prefix length k)
    duplicates: list  # original window
    batch: int
    repeated_batch: int


def layout(windows: np.ndarray, rng: np.random.Generator, batch: int) -> Layout:
    """``windows``: the scored windows [n, length + 1] (the last token is only a target); ``batch``: the forward
    pass's batch size. Duplicates are added until the rows fill whole batches, so that every batch has one size."""
    n, length = windows.shape[0], windows.shape[1] - 1
    base = windows[:, :length]
    n_canaries = min(n, max(MIN_CANARIES, -(-n // CANARY_EVERY))) if n >= 2 and length >= 2 else 0
    n_duplicates = min(n, max(MIN_DUPLICATES, -(-n // DUPLICATE_EVERY)))
    n_duplicates += -(n + n_canaries + n_duplicates) % batch
    originals = rng.choice(n, n_canaries, replace=False)
    donors = (originals + rng.integers(1, max(2, n), n_canaries)) % n
    splits = rng.integers(1, length, n_canaries) if n_canaries else np.zeros(0, dtype=np.int64)
    canary_rows = base[originals].copy()
    for row, (donor, k) in enumerate(zip(donors, splits)):
        canary_rows[row, k:] = base[donor, k:]
    duplicated = rng.choice(n, n_duplicates, replace=n_duplicates > n)
    stack = np.concatenate([base, canary_rows, base[duplicated]]).astype(np.int32)
    order = rng.permutation(len(stack))
    position = np.empty(len(stack), dtype=np.int64)
    position[order] = np.arange(len(stack))
    repeated = int(rng.integers(0, len(stack) // batch))
    shuffled = stack[order]
    inputs = np.concatenate([shuffled, shuffled[repeated * batch : (repeated + 1) * batch]])
    return Layout(inputs, position, n, [(int(i), int(k)) for i, k in zip(originals, splits)],
                  [int(i) for i in duplicated], batch, repeated)


def check_states(hidden: np.ndarray, lay: Layout, rung: tuple, rtol: float) -> dict:
    """The tests of one rung's hidden states, each of which names one cause; Rejection when one fails (states that
    must be equal may differ by ``rtol`` relative to their scale, the profile's ``Gate.trained_state_rtol``):
    1. the repeated batch, run last, equals its first run: otherwise the forward pass carries state;
    2. a duplicate window, in another batch, equals its original: otherwise it depends on its batch;
    3. a canary's states before its splice equal its original's: otherwise it reads the future."""
    def compare(a: np.ndarray, b: np.ndarray) -> float:
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise Rejection(Reason.NONFINITE, f"the hidden states of the trained model at rung {tuple(rung)} are not "
                            "finite on the validation windows")
        return float(np.abs(a - b).max()) / max(1.0, float(np.abs(a).max()))

    where = f"on the trained model at rung {tuple(rung)}"
    first, again = lay.repeated_batch * lay.batch, len(lay.inputs) - lay.batch
    worst_repeat = compare(hidden[first : first + lay.batch], hidden[again:])
    if worst_repeat > rtol:
        raise Rejection(Reason.STATEFULNESS, f"{where}, the same batch run twice gave different states "
                        f"({worst_repeat:.3g}, relative): the forward pass depends on what it processed before")
    worst_duplicate = worst_canary = 0.0
    first_duplicate = lay.n_scored + len(lay.canaries)
    for r, i in enumerate(lay.duplicates):
        worst_duplicate = max(worst_duplicate, compare(hidden[lay.position[i]], hidden[lay.position[first_duplicate + r]]))
        if worst_duplicate > rtol:
            raise Rejection(Reason.BATCH_INDEPENDENCE, f"{where}, the same window gave different states in two "
                            f"batches ({worst_duplicate:.3g}, relative): a window's states depend on the other "
                            "windows of its batch or on its place in it")
    for c, (i, k) in enumerate(lay.canaries):
        original, canary = hidden[lay.position[i], :k], hidden[lay.position[lay.n_scored + c], :k]
        worst_canary = max(worst_canary, compare(original, canary))
        if worst_canary > rtol:
            raise Rejection(Reason.LEAK_AFTER_TRAINING, f"{where}, changing the tokens from position {k} on changed "
                            f"the states at positions < {k} by {worst_canary:.3g} (relative): the model reads future "
                            "tokens")
    return {"max_canary_rel": worst_canary, "max_duplicate_rel": worst_duplicate, "max_repeat_rel": worst_repeat}


def head_loss(hidden: torch.Tensor, targets: torch.Tensor, weights: Weights) -> torch.Tensor:
    """Summed next-token cross-entropy (float64) of hidden states [b, length, d] against targets [b, length]:
    the scaffold's final LayerNorm and tied head, rebuilt from the trained tensors."""
    p = weights.params
    device = hidden.device
    h = F.layer_norm(hidden, (hidden.shape[-1],), p["ln_final.weight"].to(device), p["ln_final.bias"].to(device),
                     LAYER_NORM_EPS)
    logits = h @ p["tok_emb.weight"].to(device).T
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none").double().sum()


def scored_loss(hidden: np.ndarray, lay: Layout, windows: np.ndarray, weights: Weights, device: torch.device) -> float:
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    for start in range(0, lay.n_scored, SCORE_CHUNK_WINDOWS):
        rows = np.arange(start, min(start + SCORE_CHUNK_WINDOWS, lay.n_scored))
        states = np.asarray(hidden[lay.position[rows]])
        if not np.isfinite(states).all():
            raise Rejection(Reason.NONFINITE, "the hidden states of the trained model are not finite on the "
                            "validation windows")
        targets = torch.from_numpy(windows[rows, 1:].astype(np.int64)).to(device)
        total += head_loss(torch.from_numpy(states).to(device), targets, weights)
        count += targets.numel()
    return float(total.item() / count)


def start_forward(plan: dict) -> Started:
    """Start the forward-only sandbox ahead: it imports torch and the harness, then waits for its go line."""
    work = Path(plan["forward_dir"])
    cmd = [sys.executable, "-m", "harness.sandbox", "forward", str(work / "request.json"), str(work / "result.json")]
    # Its log is the scorer's: the forward folder is writable by the training sandbox, which runs meanwhile.
    return start_limited(confine.wrap(cmd, plan["files"], plan["seccomp"]) if plan["confined"] else cmd,
                         Path(plan["log_dir"]) / "forward.log", {**plan["env"], **scratch_environment(work / "tmp")})


def forward_pass(plan: dict, lay: Layout, forward: Started) -> tuple[float, str]:
    """Let the started forward-only sandbox run on ``lay.inputs``; (wall seconds, its log). Rejection or
    Infrastructure when it did not hand back states."""
    work = Path(plan["forward_dir"])
    # Whatever the training sandbox left here goes; the folder itself stays, as the Landlock rule names it.
    for entry in work.iterdir():
        if entry.name == "tmp" and entry.is_dir() and not entry.is_symlink():
            continue  # the forward sandbox's TMPDIR
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    np.save(work / "inputs.npy", lay.inputs)
    request = {**plan["request"], "rungs": plan["rungs"], "weights_dir": plan["weights_dir"],
               "inputs_path": str(work / "inputs.npy"), "hidden_dir": str(work / "hidden"),
               "batch_size": plan["batch_size"]}
    (work / "request.json").write_text(json.dumps(request))
    started = time.perf_counter()
    outcome = supervise(forward, plan["limit_s"], plan["memory_cap_mib"], b"go\n")
    wall_s = time.perf_counter() - started
    log = tail(Path(plan["log_dir"]) / "forward.log")
    if outcome == "timeout":
        raise Rejection(Reason.TIMEOUT, f"the forward pass of the trained model took longer than {plan['limit_s']:.0f} s",
                        log)
    if outcome == "memory":
        raise Rejection(Reason.MEMORY, f"the forward pass of the trained model exceeded {plan['memory_cap_mib']} MiB", log)
    if not (work / "result.json").exists():
        if plan["confined"] and log.startswith(confine.FAILURE_PREFIX):
            raise Infrastructure(log.splitlines()[0])
        raise Rejection(Reason.CRASH, "the forward pass of the trained model died without a result", log)
    result = read_result(work / "result.json")
    try:
        reason = Reason(result.get("reason"))
    except ValueError:
        raise Rejection(Reason.TAMPERING, "the forward pass reported an unknown reason", log) from None
    if reason != Reason.OK:
        raise Rejection(reason, f"scoring the trained model: {str(result.get('message', ''))[:500]}",
                        str(result.get("traceback", "")) or log)
    return wall_s, log


def read_hidden(path: Path, shape: tuple) -> np.ndarray:
    try:
        hidden = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise Rejection(Reason.TAMPERING, f"the forward pass left no readable hidden states ({type(exc).__name__})") from None
    if hidden.dtype != np.float32 or hidden.shape != shape:
        raise Rejection(Reason.TAMPERING, f"the forward pass left hidden states of {hidden.dtype} {hidden.shape}, "
                        f"not float32 {shape}")
    return hidden


def score(plan: dict, forward: Started) -> dict:
    """Everything above, for the rungs of ``plan``, with the started forward-only sandbox; the result record (see
    ``main``)."""
    request = plan["request"]
    profile = get_profile(request["profile"], objective=request["objective"], data_source=request["data_source"])
    device = torch.device(profile.device)
    rungs = [tuple(r) for r in plan["rungs"]]
    try:
        tokens = open_cached(Path(plan["cache_dir"]), plan["data_hash"], profile.vocab_size, profile.val_tokens,
                             profile.tokenizer_train_bytes).score
    except DataError as exc:
        raise Infrastructure(f"the scored split cannot be read: {exc}") from None
    windows = validation_windows(tokens, profile.context_len_tokens)
    weights = [load_weights(Path(plan["weights_dir"]) / f"rung{i}.pt", rung, profile.vocab_size)
               for i, rung in enumerate(rungs)]
    batch = max(profile.batch_size_seqs, 64)  # the training's evaluation batch
    lay = layout(windows, np.random.default_rng(secrets.randbits(128)), batch)
    forward_s, _ = forward_pass({**plan, "batch_size": batch}, lay, forward)
    started = time.perf_counter()
    split_sha256 = hashlib.sha256(np.ascontiguousarray(tokens).tobytes()).hexdigest()[:16]
    out = []
    checks = {"max_canary_rel": 0.0, "max_duplicate_rel": 0.0, "max_repeat_rel": 0.0}
    for i, (rung, w) in enumerate(zip(rungs, weights)):
        hidden = read_hidden(Path(plan["forward_dir"]) / "hidden" / f"rung{i}.npy",
                             (len(lay.inputs), profile.context_len_tokens, rung[0]))
        for key, value in check_states(hidden, lay, rung, profile.gate.trained_state_rtol).items():
            checks[key] = max(checks[key], value)
        out.append({"rung": list(rung), "final_val_loss": scored_loss(hidden, lay, windows, w, device), **w.counts(),
                    "scored_split_sha256": split_sha256})
    return {"status": "ok", "rungs": out, "scoring": {
        "windows": lay.n_scored, "canaries": len(lay.canaries), "duplicates": len(lay.duplicates), **checks,
        "forward_s": round(forward_s, 3), "loss_s": round(time.perf_counter() - started, 3)}}


def main(argv: list[str] | None = None) -> int:
    """Started ahead by the executor: starts the forward-only sandbox, then waits for one line on stdin, the
    training's ``{"data_hash": ...}`` (end of file: nothing to score, exit). Writes ``{"status": "ok", "rungs":
    [...], "scoring": {...}}``, ``{"status": "rejected", "reason", "message", "details"}`` or ``{"status":
    "infrastructure", "message"}`` to RESULT.json."""
    die_with_parent()
    plan_path, result_path = (argv or sys.argv[1:])[:2]
    plan = json.loads(Path(plan_path).read_text())
    plan["log_dir"] = str(Path(plan_path).parent)
    if plan["request"].get("device") == "cpu":
        torch.set_num_threads(1)  # the scorer's matmuls are small; one thread is the same on every machine
    forward = start_forward(plan)
    line = sys.stdin.readline()
    if not line:
        abandon(forward)
        return 0
    plan.update(json.loads(line))
    try:
        result = score(plan, forward)
    except Rejection as exc:
        result = {"status": "rejected", "reason": exc.reason.value, "message": exc.message, "details": exc.details}
    except Infrastructure as exc:
        result = {"status": "infrastructure", "message": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a scorer failure is never the candidate's
        result = {"status": "infrastructure", "message": f"the scorer failed: {type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()}
    finally:
        abandon(forward)
    tmp = Path(result_path).with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, result_path)
    return 0
