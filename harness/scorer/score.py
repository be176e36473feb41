"""The trusted scorer: the final loss of every trained rung, measured where no candidate code runs.

    python -m harness.scorer PLAN.json RESULT.json

The executor runs it on the host that trained the program, after the training sandbox has exited:
1. It reads the scored split from the token cache (``harness.data.open_cached``). The training sandbox never had
   it: its curves use the monitoring split.
2. It loads each rung's trained tensors with ``torch.load(weights_only=True)``: plain tensors, no code. It counts
   the trainable parameters, the attention's among them, and the buffers itself.
3. It builds the inputs: every scored window, canaries (a window's prefix followed by another window's
   continuation) and duplicates, in an order drawn from a secret seed, so nothing in the forward pass can tell
   which is which, in whole batches. The windows are split into two parts, and a canary or duplicate never runs
   in the part of its original: a forward pass that kept what it saw (in a store outside its module, which no
   snapshot of the module sees) could otherwise hand a canary its original's states. Each part ends by running
   one of its batches, drawn at random, a second time.
4. It runs the forward-only sandbox (``python -m harness.sandbox forward``) under the training sandbox's
   confinement and limits, timed from here. It never loads the program itself: it forks one child per part,
   from its state before any program ran, and each child confines itself to a folder of its own that the other
   cannot read. They hand back hidden states and nothing else is believed. Each reads the trained tensors from
   its own folder, where the scorer wrote them after checking them; none can reach the training sandbox's folder.
5. Through the scorer's own head, the repeated batch must give the predictions it gave the first time (else
   ``statefulness``: the forward pass carries state), a duplicate those of its original (else
   ``batch_independence``), and a canary, before its splice, those of its original (else ``leak_after_training``:
   it reads the future).
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
import sys
import time
import traceback
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.data import DataError, open_cached, validation_windows
from harness.trusted import confine
from harness.trusted.executor import (FORWARD_PARTS, DiskCap, Started, abandon, disk_message, read_result,
                                      scratch_environment, start_limited, supervise, tail)
from harness.trusted.process_lifetime import die_with_parent
from harness.trusted.profiles import request_profile, training_profile
from harness.trusted.reasons import Reason
from harness.trusted.untrusted_files import files_bytes, folder_beneath, regular_file_beneath

# The scaffold's final norm is nn.LayerNorm(d_model) with torch's default epsilon. tests/test_scorer.py checks that
# this head reproduces the frozen model's own loss.
LAYER_NORM_EPS = 1e-5
# One canary per this many scored windows, and at least the minimum; the same for duplicates.
CANARY_EVERY, MIN_CANARIES = 16, 4
DUPLICATE_EVERY, MIN_DUPLICATES = 32, 2
SCORE_CHUNK_WINDOWS = 64  # windows whose loss is computed at a time
# What a part of the forward pass reports (``harness.sandbox.entry.forward_part``); ``tampering`` when anything else.
FORWARD_REASONS = (Reason.OK.value, Reason.POLICY.value, Reason.CRASH.value)
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


def _stored_size(path: Path) -> int | None:
    """The bytes the archive ``torch.save`` wrote unpacks to, or None when it is not such an archive: every entry
    stored, none compressed (a few compressed megabytes could unpack to gigabytes in this process)."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    if any(entry.compress_type != zipfile.ZIP_STORED or entry.file_size != entry.compress_size for entry in entries):
        return None
    return sum(entry.file_size for entry in entries)


def _as_saved(tensor) -> bool:
    """Whether ``tensor`` is as ``save_weights`` writes each: a plain tensor, contiguous, alone in its storage. A view
    that repeats its storage (a stride of 0) would name far more elements than the file holds, and every size
    derived from the weights (what the forward pass may write, what this process compares) with them."""
    return (type(tensor) is torch.Tensor and tensor.is_contiguous() and tensor.storage_offset() == 0
            and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size())


def load_weights(path: Path, rung: tuple, vocab_size: int, max_bytes: int, root: Path | None = None) -> Weights:
    """The tensors the training sandbox left for ``rung``; Rejection(tampering) when they are not what
    ``harness.sandbox.train.save_weights`` writes, or hold more than ``max_bytes``. ``root``: the sandbox's run
    folder, the highest folder the sandbox could not replace (default: the file's own folder)."""
    d_model = rung[0]
    # A link, at any level below the run folder, would have this process read a file of the program's choosing; a
    # pipe would hang it.
    if os.path.lexists(path) and not regular_file_beneath(root or path.parent, path):
        raise Rejection(Reason.TAMPERING, f"the trained weights of rung {tuple(rung)} are not a regular file in the "
                        "folder the training writes (a link, a pipe)")
    size = _stored_size(path) if path.exists() else 0
    if size is None or size > max_bytes:
        raise Rejection(Reason.TAMPERING, f"the trained weights of rung {tuple(rung)} are not the archive the training "
                        f"writes: " + ("compressed or unreadable" if size is None else
                                       f"{size / 2**20:.0f} MiB, more than the {max_bytes / 2**20:.0f} MiB allowed"))
    try:
        pack = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - a missing or hostile file is the program's doing
        raise Rejection(Reason.TAMPERING, f"the trained weights of rung {tuple(rung)} are missing or unreadable "
                        f"({type(exc).__name__})") from None
    ok = isinstance(pack, dict) and set(pack) == {"params", "buffers"} and all(
        isinstance(group, dict) and all(isinstance(k, str) and _as_saved(v) for k, v in group.items())
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
    """Where each window went. The unshuffled stack is the scored windows, then the canaries, then the duplicates;
    row r of it is row ``where[r, 1]`` of part ``where[r, 0]``'s inputs. A part is what one child process of the
    forward pass runs: whole batches, ending with a second copy of one of them (``repeated[part]``), run last."""

    parts: tuple  # per part: int32 [rows, length], its shuffled rows, then its repeated batch
    where: np.ndarray  # int64 [rows of the stack, 2]: (part, row of its inputs)
    n_scored: int
    canaries: list  # (original window, prefix length k)
    duplicates: list  # original window
    batch: int
    repeated: tuple  # per part: the batch it runs a second time

    def row(self, states: list, r: int) -> np.ndarray:
        """The states of row ``r`` of the stack; ``states``: each part's states [rows, length, d]."""
        part, i = self.where[r]
        return states[part][i]

    def rows(self, states: list, rs) -> np.ndarray:
        return np.stack([self.row(states, r) for r in rs])


def layout(windows: np.ndarray, rng: np.random.Generator, batch: int, parts: int = FORWARD_PARTS) -> Layout:
    """``windows``: the scored windows [n, length + 1] (the last token is only a target); ``batch``: the forward
    pass's batch size; ``parts``: the forward pass's child processes (with one, a forward pass that keeps what it saw
    passes every test). Each part gets as many of the scored windows as the others, give or take one. A canary or
    duplicate runs in the part after its original's, and no window is both a canary's original and duplicated, so
    no part holds two rows that share a canary's prefix. Each part is then filled to whole batches with duplicates
    of the other parts' windows (of its own, with so few windows that the others have none to spare)."""
    n, length = windows.shape[0], windows.shape[1] - 1
    base = windows[:, :length]
    n_canaries = min(n - 1, max(MIN_CANARIES, -(-n // CANARY_EVERY))) if n >= 2 and length >= 2 else 0
    originals = rng.choice(n, n_canaries, replace=False)
    donors = (originals + rng.integers(1, max(2, n), n_canaries)) % n
    splits = rng.integers(1, length, n_canaries) if n_canaries else np.zeros(0, dtype=np.int64)
    canary_rows = base[originals].copy()
    for row, (donor, k) in enumerate(zip(donors, splits)):
        canary_rows[row, k:] = base[donor, k:]
    part_of = np.empty(n, dtype=np.int64)
    part_of[rng.permutation(n)] = np.arange(n) % parts
    pool = np.setdiff1d(np.arange(n), originals)  # windows that may be duplicated
    duplicated = list(rng.choice(pool, min(len(pool), max(MIN_DUPLICATES, -(-n // DUPLICATE_EVERY))), replace=False))
    row_parts = [*part_of, *((part_of[originals] + 1) % parts), *((part_of[duplicated] + 1) % parts)]
    for part in range(parts):
        others = pool[part_of[pool] != part]
        fill = -row_parts.count(part) % batch
        duplicated += list(rng.choice(others if len(others) else pool, fill))
        row_parts += [part] * fill
    stack = np.concatenate([base, canary_rows, base[np.asarray(duplicated, dtype=np.int64)]]).astype(np.int32)
    row_parts = np.asarray(row_parts)
    where = np.empty((len(stack), 2), dtype=np.int64)
    inputs, repeated = [], []
    for part in range(parts):
        order = rng.permutation(np.flatnonzero(row_parts == part))
        where[order] = np.stack([np.full(len(order), part), np.arange(len(order))], axis=1)
        again = int(rng.integers(0, len(order) // batch))
        shuffled = stack[order]
        inputs.append(np.concatenate([shuffled, shuffled[again * batch : (again + 1) * batch]]))
        repeated.append(again)
    return Layout(tuple(inputs), where, n, [(int(i), int(k)) for i, k in zip(originals, splits)],
                  [int(i) for i in duplicated], batch, tuple(repeated))


def check_states(states: list, lay: Layout, rung: tuple, weights: Weights, atol_nats: float,
                 device: torch.device) -> dict:
    """The tests of one rung's hidden states (``states``: each part's), each of which names one cause. What is
    compared is what the loss is computed from: the log-probabilities of every token at every position, through the
    scorer's own head (``logits``). Two that must be equal may differ by ``atol_nats`` (the profile's
    ``Gate.trained_logprob_atol``), float rounding and nothing else; Rejection when one test fails:
    1. each part's repeated batch, run last, equals its first run: otherwise the forward pass carries state;
    2. a duplicate window, in another part, equals its original: otherwise it depends on its batch;
    3. a canary's predictions before its splice equal its original's: otherwise it reads the future.
    Hidden states compared relative to their own scale would not do: a model that writes one huge value into them
    (which the final LayerNorm of its position mostly absorbs) would make any difference elsewhere look small."""
    def compare(a: np.ndarray, b: np.ndarray) -> float:
        pa, pb = (torch.log_softmax(logits(torch.from_numpy(np.array(x)).to(device), weights).float(), dim=-1)
                  for x in (a, b))
        if not (bool(torch.isfinite(pa).all()) and bool(torch.isfinite(pb).all())):
            raise Rejection(Reason.NONFINITE, f"the predictions of the trained model at rung {tuple(rung)} are not "
                            "finite on the validation windows")
        return float((pa - pb).abs().max())

    where = f"on the trained model at rung {tuple(rung)}"
    worst_repeat = worst_duplicate = worst_canary = 0.0
    for hidden, again in zip(states, lay.repeated):
        first, last = again * lay.batch, len(hidden) - lay.batch
        for j in range(lay.batch):
            worst_repeat = max(worst_repeat, compare(hidden[first + j], hidden[last + j]))
            if worst_repeat > atol_nats:
                raise Rejection(Reason.STATEFULNESS, f"{where}, the same batch run twice gave different predictions "
                                f"({worst_repeat:.3g} nats): the forward pass depends on what it processed before")
    first_duplicate = lay.n_scored + len(lay.canaries)
    for r, i in enumerate(lay.duplicates):
        worst_duplicate = max(worst_duplicate, compare(lay.row(states, i), lay.row(states, first_duplicate + r)))
        if worst_duplicate > atol_nats:
            raise Rejection(Reason.BATCH_INDEPENDENCE, f"{where}, the same window gave different predictions in two "
                            f"batches ({worst_duplicate:.3g} nats): a window's states depend on the windows run "
                            "with it or before it, or on its place among them")
    for c, (i, k) in enumerate(lay.canaries):
        original, canary = lay.row(states, i)[:k], lay.row(states, lay.n_scored + c)[:k]
        worst_canary = max(worst_canary, compare(original, canary))
        if worst_canary > atol_nats:
            raise Rejection(Reason.LEAK_AFTER_TRAINING, f"{where}, changing the tokens from position {k} on changed "
                            f"the predictions at positions < {k} by {worst_canary:.3g} nats: the model reads future "
                            "tokens")
    return {"max_canary_nats": worst_canary, "max_duplicate_nats": worst_duplicate, "max_repeat_nats": worst_repeat}


def logits(hidden: torch.Tensor, weights: Weights) -> torch.Tensor:
    """The scaffold's final LayerNorm and tied head, rebuilt from the trained tensors, on hidden states [..., d]."""
    p = weights.params
    device = hidden.device
    h = F.layer_norm(hidden, (hidden.shape[-1],), p["ln_final.weight"].to(device), p["ln_final.bias"].to(device),
                     LAYER_NORM_EPS)
    return h @ p["tok_emb.weight"].to(device).T


def head_loss(hidden: torch.Tensor, targets: torch.Tensor, weights: Weights) -> torch.Tensor:
    """Summed next-token cross-entropy (float64) of hidden states [b, length, d] against targets [b, length]."""
    out = logits(hidden, weights)
    return F.cross_entropy(out.float().reshape(-1, out.shape[-1]), targets.reshape(-1), reduction="none").double().sum()


def scored_loss(states: list, lay: Layout, windows: np.ndarray, weights: Weights, device: torch.device) -> float:
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    for start in range(0, lay.n_scored, SCORE_CHUNK_WINDOWS):
        rows = np.arange(start, min(start + SCORE_CHUNK_WINDOWS, lay.n_scored))
        states_of_rows = lay.rows(states, rows)
        if not np.isfinite(states_of_rows).all():
            raise Rejection(Reason.NONFINITE, "the hidden states of the trained model are not finite on the "
                            "validation windows")
        targets = torch.from_numpy(windows[rows, 1:].astype(np.int64)).to(device)
        total += head_loss(torch.from_numpy(states_of_rows).to(device), targets, weights)
        count += targets.numel()
    return float(total.item() / count)


def start_forward(plan: dict) -> Started:
    """Start the forward-only sandbox ahead: it imports torch and the harness, then waits for its go line."""
    work = Path(plan["forward"]["dir"])
    cmd = [sys.executable, "-m", "harness.sandbox", "forward", str(work / "request.json"), str(work / "result.json")]
    files = plan["forward"]["files"]
    return start_limited(confine.wrap(cmd, files["rules"], plan["seccomp"], request_profile(plan["request"]).device,
                                      landlock=files["landlock"], private_root=files["private_root"])
                         if plan["confined"] else cmd,
                         Path(plan["log_dir"]) / "forward.log", {**plan["env"], **scratch_environment(work / "tmp")})


def forward_pass(plan: dict, lay: Layout, weights: list, forward: Started) -> float:
    """Hand the started forward-only sandbox the parts' inputs (``lay.parts``) and the checked ``weights``, one
    folder per part, and let it run them, one child process each, at once; its wall seconds. Rejection or
    Infrastructure when a part did not hand back states."""
    work = Path(plan["forward"]["dir"])
    for folder, inputs in zip(plan["forward"]["parts"], lay.parts):
        for i, w in enumerate(weights):
            # The trained parameters only: the part builds the buffers and frozen parameters itself. A trained tensor
            # the training labelled a buffer (the parameter count never saw it) so never reaches the scored model.
            torch.save({"params": w.params}, Path(folder) / "weights" / f"rung{i}.pt")
        np.save(Path(folder) / "inputs.npy", inputs)
    apart = _parts_apart(plan)
    request = {**plan["request"], "rungs": plan["rungs"], "parts": plan["forward"]["parts"],
               "landlock": bool(plan["confined"] and plan["forward"]["files"]["landlock"]), "apart": apart,
               # What each part may read, made here: inside the sandbox /etc cannot be listed to name its entries.
               # Not the forward folder, which holds both parts: each child adds its own.
               "part_reads": [r for r in (plan["forward"]["files"]["rules"] or [[]])[0] if r != str(work)],
               "batch_size": plan["batch_size"]}
    disk = forward_disk_cap(work, lay, weights, plan["disk_cap_mib"])
    (work / "request.json").write_text(json.dumps({**request, "disk_cap_bytes": disk.cap_bytes}))
    started = time.perf_counter()
    outcome = supervise(forward, plan["limit_s"], plan["memory_cap_mib"], b"go\n", disk=disk)
    wall_s = time.perf_counter() - started
    log = tail(Path(plan["log_dir"]) / "forward.log")
    if outcome == "timeout":
        raise Rejection(Reason.TIMEOUT, f"the forward pass of the trained model took longer than {plan['limit_s']:.0f} s",
                        log)
    if outcome == "memory":
        raise Rejection(Reason.MEMORY, f"the forward pass of the trained model exceeded {plan['memory_cap_mib']} MiB", log)
    if outcome == "disk":
        raise Rejection(Reason.POLICY, f"the forward pass of the trained model: {disk_message(disk)}", log)
    if plan["confined"] and not (work / "result.json").exists() and log.startswith(confine.FAILURE_PREFIX):
        raise Infrastructure(log.splitlines()[0])
    set_up = parts_set_up(work / "result.json", len(plan["forward"]["parts"]), apart)
    for folder, confined in zip(plan["forward"]["parts"], set_up):
        check_part(Path(folder), confined, log, work)
    return wall_s


def forward_disk_cap(work: Path, lay: Layout, weights: list, cap_mib: int) -> DiskCap:
    """The forward-only sandbox's disk cap: what its folder holds already (the inputs and weights written here), what
    its parts write (each rung's float32 hidden states, and a record of its buffers, at most twice their size:
    ``check_constructed``), and the profile's ``disk_cap_mib`` besides, as any sandbox has."""
    rows = sum(inputs.shape[0] * inputs.shape[1] for inputs in lay.parts)
    hidden = rows * sum(w.params["tok_emb.weight"].shape[1] for w in weights) * 4
    buffers = len(lay.parts) * sum(2 * sum(v.numel() * v.element_size() for v in w.buffers.values()) + 2**20
                                   for w in weights)
    return DiskCap(work, (files_bytes(work, []) or 0) + hidden + buffers + (cap_mib << 20))


def parts_set_up(record: Path, parts: int, apart: bool) -> list[bool]:
    """Per part, whether its process told the forward sandbox that it was set up before the program loaded
    (``entry.forward``'s record). Believed only where the parts are apart: elsewhere a part could reach the other's
    pipe or the record, so every part counts as set up, and a missing result is the candidate's."""
    told = read_result(record).get("confined") if apart else None  # a link, pipe or missing file: no record
    if not (isinstance(told, list) and len(told) == parts and all(isinstance(t, bool) for t in told)):
        return [True] * parts
    return told


def check_part(folder: Path, confined: bool, log: str, root: Path | None = None) -> None:
    """Raise unless the part of the forward pass in ``folder`` wrote hidden states. ``confined``: whether it was set
    up before the program loaded (``parts_set_up``); a part that was not and left no record failed in the harness's
    own set-up (``Infrastructure``); one that was is the candidate's ``crash``. ``root``: the forward pass's folder,
    which holds ``folder`` (default: its parent)."""
    if os.path.lexists(folder) and not folder_beneath(root or folder.parent, folder):
        raise Rejection(Reason.TAMPERING, "the forward pass replaced the folder of one of its parts", log)
    path, part_log = folder / "result.json", tail(folder / "forward.log") or log
    if not path.exists():
        if not confined:
            raise Infrastructure("a part of the forward pass failed in its set-up, before the program loaded: "
                                 + (part_log.strip().splitlines() or ["no log"])[-1][:300])
        raise Rejection(Reason.CRASH, "the forward pass of the trained model died without a result", part_log)
    result = read_result(path)
    reason = result.get("reason")
    if reason not in FORWARD_REASONS:  # the part writes its record itself: no other reason is its to give
        raise Rejection(Reason.TAMPERING, "the forward pass reported a reason it never gives", part_log)
    if reason != Reason.OK.value:
        raise Rejection(Reason(reason), f"scoring the trained model: {str(result.get('message', ''))[:500]}",
                        str(result.get("traceback", "")) or part_log)


def _parts_apart(plan: dict) -> bool:
    """Whether the two parts of the forward pass are apart in files, IPC objects, sockets, signals, file locks and
    file watches: each keeps to its own folder (a Landlock ruleset of its own), with the scopes (ABI 6: no signal
    and no abstract socket outside it); System V IPC and message queues, which the two share, are refused (the
    seccomp filter); and each opens no socket and takes no lock or watch (``seccomp.apart_program``). Only on the
    CPU: on CUDA both may write POSIX shared memory, which the driver's check ran with. Elsewhere the parts are
    apart in memory only. Still open, even here: what one part can learn of the other as a process in the same PID
    namespace (which process ids exist, its scheduling attributes such as its CPU affinity), and timing."""
    return bool(plan["confined"] and plan["forward"]["files"]["landlock"] and plan["seccomp"]
                and confine.landlock_abi() >= confine.SCOPES_ABI and request_profile(plan["request"]).device == "cpu")


def check_constructed(path: Path, rung: tuple, weights: Weights, root: Path | None = None) -> None:
    """The buffers and frozen parameters a part of the forward pass built (``entry.forward_part``) must be the trained
    ones: training changes neither, and a forward pass that wrote into them did what the gate's statefulness check
    refuses. The part scored with what it built, so a change never reached the score; this names it."""
    if not regular_file_beneath(root or path.parent, path):
        raise Rejection(Reason.TAMPERING, "the forward pass left no record of the buffers it built")
    # What the record holds is known: the trained buffers' tensors, whose bytes bound what is unpacked here.
    expected = sum(v.numel() * v.element_size() for v in weights.buffers.values())
    size = _stored_size(path)
    if size is None or size > 2 * expected + 2**20:
        raise Rejection(Reason.TAMPERING, "the forward pass left a record of its buffers that is not the archive "
                        "torch writes, or larger than the buffers it names")
    try:
        built = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - a hostile file is the program's doing
        raise Rejection(Reason.TAMPERING, f"the forward pass left an unreadable record of its buffers "
                        f"({type(exc).__name__})") from None
    if not (isinstance(built, dict) and set(built) == set(weights.buffers)
            and all(type(v) is torch.Tensor for v in built.values())):
        raise Rejection(Reason.TAMPERING, "the forward pass built other buffers than the training saved")
    for name, trained in weights.buffers.items():
        fresh = built[name]
        same = fresh.shape == trained.shape and fresh.dtype == trained.dtype and (
            torch.equal(fresh, trained) or fresh.is_floating_point()
            and torch.allclose(fresh, trained, rtol=0.0, atol=0.0, equal_nan=True))
        if not same:
            raise Rejection(Reason.STATEFULNESS, f"training changed {name!r} of rung {tuple(rung)}, a buffer or "
                            "frozen parameter: forward wrote into it (the model was scored with the value its "
                            "construction gives). Keep state out of forward; a value to learn is an nn.Parameter")


def read_hidden(path: Path, shape: tuple, root: Path | None = None) -> np.ndarray:
    if os.path.lexists(path) and not regular_file_beneath(root or path.parent, path):
        raise Rejection(Reason.TAMPERING, "the forward pass left a link or a pipe, not its hidden states")
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
    profile = request_profile(request)
    device = torch.device(profile.device)
    rungs = [tuple(r) for r in plan["rungs"]]
    try:
        tokens = open_cached(Path(plan["cache_dir"]), plan["data_hash"], profile.vocab_size, profile.val_tokens,
                             profile.tokenizer_train_bytes).score
    except DataError as exc:
        raise Infrastructure(f"the scored split cannot be read: {exc}") from None
    windows = validation_windows(tokens, profile.context_len_tokens)
    # The scorer holds every rung's tensors at once, within its memory cap.
    max_bytes = int(plan["memory_cap_mib"]) * 2**20 // (2 * max(1, len(rungs)))
    trained = Path(plan["weights_dir"])
    weights = [load_weights(trained / f"rung{i}.pt", rung, profile.vocab_size, max_bytes, trained.parent)
               for i, rung in enumerate(rungs)]
    batch = training_profile(request).eval_batch_seqs  # the training's own evaluation batch
    lay = layout(windows, np.random.default_rng(secrets.randbits(128)), batch, len(plan["forward"]["parts"]))
    forward_s = forward_pass({**plan, "batch_size": batch}, lay, weights, forward)
    started = time.perf_counter()
    split_sha256 = hashlib.sha256(np.ascontiguousarray(tokens).tobytes()).hexdigest()[:16]
    out = []
    checks = {"max_canary_nats": 0.0, "max_duplicate_nats": 0.0, "max_repeat_nats": 0.0}
    for i, (rung, w) in enumerate(zip(rungs, weights)):
        work = Path(plan["forward"]["dir"])
        states = [read_hidden(Path(folder) / "hidden" / f"rung{i}.npy",
                              (len(inputs), profile.context_len_tokens, rung[0]), work)
                  for folder, inputs in zip(plan["forward"]["parts"], lay.parts)]
        for folder in plan["forward"]["parts"]:
            check_constructed(Path(folder) / "constructed" / f"rung{i}.pt", rung, w, work)
        for key, value in check_states(states, lay, rung, w, profile.gate.trained_logprob_atol, device).items():
            checks[key] = max(checks[key], value)
        out.append({"rung": list(rung), "final_val_loss": scored_loss(states, lay, windows, w, device), **w.counts(),
                    "scored_split_sha256": split_sha256})
    return {"status": "ok", "rungs": out, "scoring": {
        "windows": lay.n_scored, "canaries": len(lay.canaries), "duplicates": len(lay.duplicates),
        "forward_parts": len(lay.parts), "forward_parts_apart": _parts_apart(plan), **checks,
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
