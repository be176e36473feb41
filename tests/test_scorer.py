"""The trusted scorer: the final loss is measured where no candidate code runs, from hidden states a forward-only
sandbox hands back, with canary and duplicate windows that catch a forward pass that reads the future or carries
state; nothing the training sandbox says about its losses or its size is believed."""

import json
import math
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

import adversarial
import security
from harness.scaffold import build_model
from harness.scorer.score import Rejection, Weights, check_constructed, check_states, head_loss, layout, load_weights
from harness.sandbox.loader import load_attention
from harness.sandbox.train import save_weights
from harness.trusted import confine, executor
from harness.trusted.evaluate import evaluate, prepare, sandbox_request
from harness.trusted.frameworks import get_framework
from harness.trusted.profiles import get_profile
from harness.trusted.reasons import Reason
from harness.trusted.scoring import TRAINING_BEGINS, objective_from_untrusted

RUNG, VOCAB, CONTEXT = (32, 2, 2), 512, 16
MAX_BYTES = 64 * 2**20  # what the scorer lets one rung's trained tensors take (of its memory cap)


def _deflated_copy(source: Path, target: Path) -> None:
    """The archive ``torch.save`` wrote, each entry compressed: torch itself unpacks it."""
    import zipfile

    with zipfile.ZipFile(source) as stored, zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as packed:
        for entry in stored.infolist():
            packed.writestr(entry.filename, stored.read(entry))


def _seed_model():
    fw = get_framework("ttr")
    model = build_model(load_attention(fw.seed_source(), str(fw.seed_path)), RUNG, VOCAB, CONTEXT, 0.0, 3)
    return model.eval()


def test_the_scorers_head_reproduces_the_frozen_models_own_loss(tmp_path):
    model = _seed_model()
    save_weights(model, tmp_path / "rung0.pt")
    weights = load_weights(tmp_path / "rung0.pt", RUNG, VOCAB, MAX_BYTES)
    idx = torch.randint(0, VOCAB, (5, CONTEXT + 1), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, own = model(idx[:, :-1], idx[:, 1:], reduction="none")
        trusted = head_loss(model.hidden(idx[:, :-1]), idx[:, 1:], weights)
    assert math.isclose(float(trusted), float(own.double().sum()), rel_tol=1e-6)
    counts = weights.counts()
    attention = sum(p.numel() for b in model.blocks for p in b.attn.parameters())
    assert counts["attention_params"] == attention
    assert counts["non_embedding_params"] == sum(p.numel() for p in model.parameters()) - model.tok_emb.weight.numel()


def test_weights_that_are_not_plain_tensors_are_tampering(tmp_path):
    model = _seed_model()
    save_weights(model, tmp_path / "good.pt")
    pack = torch.load(tmp_path / "good.pt", weights_only=True)
    cases = {"missing": None, "not_a_dict": [1, 2], "an_object": {"params": {"x": torch.nn.Linear(2, 2)}, "buffers": {}},
             "no_head": {"params": {k: v for k, v in pack["params"].items() if k != "tok_emb.weight"}, "buffers": {}},
             "wrong_shape": {"params": {**pack["params"], "ln_final.weight": torch.ones(7)}, "buffers": {}},
             # A buffer that repeats one element (stride 0): 10^12 elements from four bytes on disk, and every size
             # derived from the buffers (what the forward pass may write and this process compare) with them.
             "a_repeating_view": {**pack, "buffers": {**pack["buffers"], "x": torch.zeros(1).expand(10**6, 10**6)}},
             "a_view_of_more": {**pack, "buffers": {**pack["buffers"], "x": torch.zeros(64)[8:16]}}}
    (tmp_path / "a_link.pt").symlink_to(tmp_path / "good.pt")  # good tensors, read through a link the sandbox made
    cases["a_link"] = None
    for name, content in cases.items():
        if content is not None:
            torch.save(content, tmp_path / f"{name}.pt")
        with pytest.raises(Rejection) as caught:
            load_weights(tmp_path / f"{name}.pt", RUNG, VOCAB, MAX_BYTES)
        assert caught.value.reason == Reason.TAMPERING, name


def test_weights_that_would_unpack_to_more_than_the_scorer_may_hold_are_tampering(tmp_path):
    """A compressed archive (a few megabytes that unpack to gigabytes in the scorer's process) and one larger than
    the scorer's share of its memory are refused before anything is unpacked; the archive torch writes passes."""
    model = _seed_model()
    save_weights(model, tmp_path / "good.pt")
    assert load_weights(tmp_path / "good.pt", RUNG, VOCAB, MAX_BYTES).params
    _deflated_copy(tmp_path / "good.pt", tmp_path / "deflated.pt")
    assert torch.load(tmp_path / "deflated.pt", weights_only=True)["params"]  # torch itself would unpack it
    size = (tmp_path / "good.pt").stat().st_size
    for name, max_bytes, fragment in (("deflated", MAX_BYTES, "compressed"), ("good", size // 2, "MiB allowed")):
        with pytest.raises(Rejection) as caught:
            load_weights(tmp_path / f"{name}.pt", RUNG, VOCAB, max_bytes)
        assert caught.value.reason == Reason.TAMPERING and fragment in caught.value.message, name


def _windows(n=40, length=CONTEXT, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, (n, length + 1))


def test_the_record_of_constructed_buffers_is_checked_before_it_is_believed(tmp_path):
    """What a part of the forward pass says it built: equal to the trained buffers passes; a changed value is named
    (statefulness); other names, an object, a link to a file the part chose or a missing record are tampering."""
    weights = Weights({}, {"blocks.0.attn.mask": torch.ones(4, 4).tril(), "blocks.0.attn.nan": torch.tensor(float("nan"))})
    path = tmp_path / "rung0.pt"

    def verdict(record):
        path.unlink(missing_ok=True)
        if record is not None:
            torch.save(record, path)
        try:
            check_constructed(path, RUNG, weights)
        except Rejection as exc:
            return exc.reason
        return None

    assert verdict(dict(weights.buffers)) is None
    assert verdict({**weights.buffers, "blocks.0.attn.mask": torch.ones(4, 4)}) == Reason.STATEFULNESS
    assert verdict({"blocks.0.attn.mask": torch.ones(4, 4).tril()}) == Reason.TAMPERING
    assert verdict({**weights.buffers, "blocks.0.attn.mask": torch.nn.Linear(2, 2)}) == Reason.TAMPERING
    assert verdict(None) == Reason.TAMPERING
    # Before anything is unpacked: a record far larger than the buffers it names (without this check, a changed
    # shape: statefulness), and the right record compressed (a few megabytes could unpack to gigabytes here).
    assert verdict({**weights.buffers, "blocks.0.attn.mask": torch.zeros(2**20)}) == Reason.TAMPERING
    torch.save(dict(weights.buffers), tmp_path / "stored.pt")
    _deflated_copy(tmp_path / "stored.pt", path)
    with pytest.raises(Rejection, match="not the archive"):
        check_constructed(path, RUNG, weights)
    path.unlink()
    torch.save(dict(weights.buffers), tmp_path / "elsewhere.pt")
    path.symlink_to(tmp_path / "elsewhere.pt")  # the right tensors, through a link the part made
    with pytest.raises(Rejection) as info:
        check_constructed(path, RUNG, weights)
    assert info.value.reason == Reason.TAMPERING


def test_the_layout_mixes_canaries_and_duplicates_among_the_scored_windows():
    windows = _windows()
    lay = layout(windows, np.random.default_rng(1), batch=16)
    base = windows[:, :-1]
    rows = len(lay.where)
    assert lay.n_scored == 40 and len(lay.canaries) >= 4 and len(lay.duplicates) >= 2
    assert len(lay.parts) == 2 and all(len(inputs) % 16 == 0 for inputs in lay.parts)
    every_row = [(p, i) for p, inputs in enumerate(lay.parts) for i in range(len(inputs) - 16)]
    assert sorted(map(tuple, lay.where)) == every_row
    assert all(np.array_equal(lay.row(lay.parts, i), base[i]) for i in range(40))
    assert abs(sum(lay.where[:40, 0] == 0) - 20) <= 1  # the scored windows, half in each sandbox
    for c, (i, k) in enumerate(lay.canaries):
        canary = lay.row(lay.parts, 40 + c)
        assert 1 <= k < CONTEXT and np.array_equal(canary[:k], base[i, :k]) and not np.array_equal(canary, base[i])
    for r, i in enumerate(lay.duplicates):
        assert np.array_equal(lay.row(lay.parts, 40 + len(lay.canaries) + r), base[i])
    # No sandbox holds two rows that share a canary's prefix: a canary's original is never duplicated, and the canary
    # runs in the other sandbox.
    canary_originals = {i for i, _ in lay.canaries}
    assert not canary_originals & set(lay.duplicates)
    for c, (i, _) in enumerate(lay.canaries):
        assert lay.where[40 + c, 0] != lay.where[i, 0]
    for r, i in enumerate(lay.duplicates):
        assert lay.where[40 + len(lay.canaries) + r, 0] != lay.where[i, 0]
    for inputs, again in zip(lay.parts, lay.repeated):
        assert np.array_equal(inputs[-16:], inputs[again * 16 : again * 16 + 16])
    assert rows == 40 + len(lay.canaries) + len(lay.duplicates)
    other = layout(windows, np.random.default_rng(2), 16)
    assert other.where.tolist() != lay.where.tolist()  # a secret order


@pytest.mark.parametrize("n", [1, 2, 3, 17])
def test_the_layout_holds_for_few_windows(n):
    lay = layout(_windows(n), np.random.default_rng(n), batch=8)
    assert all(len(inputs) % 8 == 0 and len(inputs) > 8 for inputs in lay.parts)
    assert not {i for i, _ in lay.canaries} & set(lay.duplicates)
    assert all(lay.where[n + c, 0] != lay.where[i, 0] for c, (i, _) in enumerate(lay.canaries))


def _states(lay, fn, batch=16) -> list:
    """Each forward sandbox's states: fn(window, batch index, batch, memory) for each row of its inputs, run batch by
    batch as a forward sandbox does; ``memory`` is a dict the sandbox keeps from one call to the next."""
    out = []
    for inputs in lay.parts:
        memory = {}
        rows = [fn(row, b // batch, inputs[b - b % batch : b - b % batch + batch], memory)
                for b, row in enumerate(inputs)]
        out.append(np.stack(rows).astype(np.float32))
    return out


D_TEST = 4
# The scorer's head for the synthetic states below. A LayerNorm ignores a state's scale and its mean, so these states
# and their perturbations change direction.
HEAD = Weights({"tok_emb.weight": torch.randn(VOCAB, D_TEST, generator=torch.Generator().manual_seed(0)) * 3,
                "ln_final.weight": torch.ones(D_TEST), "ln_final.bias": torch.zeros(D_TEST)}, {})
ATOL = get_profile("smoke").gate.trained_logprob_atol
PERTURB = np.array([1.0, -1.0, 0.0, 0.0])


def _causal(row, *_):  # features of a running mean of token ids: each position sees only its past
    m = np.cumsum(row) / np.arange(1, len(row) + 1) / 64
    return np.stack([np.sin(m), np.cos(m), np.sin(2 * m), np.cos(3 * m)], axis=1)


def _reads_next(row, *_):
    return _causal(row) + np.append(row[1:], 0)[:, None] * 1e-3 * PERTURB  # sees t + 1


def _check(states, lay):
    return check_states(states, lay, RUNG, HEAD, ATOL, torch.device("cpu"))


def test_each_way_a_forward_pass_can_cheat_is_caught_and_named():
    lay = layout(_windows(), np.random.default_rng(3), batch=16)
    cheats = {
        "leak_after_training": _reads_next,
        "statefulness": lambda row, b, *_: _causal(row) + b * 0.1 * PERTURB,  # drifts with the batches seen before
        "batch_independence": lambda row, b, batch, _: _causal(row) + batch.mean() * 1e-3 * PERTURB,  # mixes its batch
    }
    checks = _check(_states(lay, _causal), lay)
    assert max(checks.values()) <= ATOL
    for reason, fn in cheats.items():
        with pytest.raises(Rejection) as caught:
            _check(_states(lay, fn), lay)
        assert caught.value.reason == Reason(reason), (reason, caught.value.message)
    broken = _states(lay, _causal)
    part, i = lay.where[lay.canaries[0][0]]
    broken[part][i, 0, 0] = np.nan
    with pytest.raises(Rejection) as caught:
        _check(broken, lay)
    assert caught.value.reason == Reason.NONFINITE


def test_one_huge_value_in_the_states_hides_no_leak():
    """A huge constant added to every channel at position 0, which the LayerNorm removes: compared relative to their
    largest value, the states of any leak differed by 1e-6 at most."""
    lay = layout(_windows(), np.random.default_rng(5), batch=16)

    def huge(row, *_):
        states = _reads_next(row)
        states[0] += 1e6
        return states

    with pytest.raises(Rejection) as caught:
        _check(_states(lay, huge), lay)
    assert caught.value.reason == Reason.LEAK_AFTER_TRAINING


def _replays(row, _b, _batch, memory):
    """Reads the next token, and hands each window the states of the earlier window that shares its longest prefix,
    for that prefix: a canary then gets its original's states, a duplicate and a repeated batch their first run's."""
    states = _reads_next(row)
    best, shared = None, 0
    for seen, seen_states in memory.values():
        n = int(np.cumprod(seen == row).sum())
        if n > shared:
            best, shared = seen_states, n
    if best is not None:
        states[:shared] = best[:shared]
    memory[len(memory)] = (row, states)
    return states


def test_a_forward_pass_that_replays_earlier_windows_to_the_canaries_is_caught():
    """A store kept outside the module (a dict at the top of the block) escapes every snapshot of the module. With
    every window in one process it passes every test; split between two, a canary never meets its original."""
    windows = _windows()
    windows[:, 0] = np.arange(len(windows))  # no two windows share a first token, so only a canary meets its original
    together = layout(windows, np.random.default_rng(4), batch=16, parts=1)
    assert max(_check(_states(together, _replays), together).values()) <= ATOL
    apart = layout(windows, np.random.default_rng(4), batch=16)
    with pytest.raises(Rejection) as caught:
        _check(_states(apart, _replays), apart)
    assert caught.value.reason == Reason.LEAK_AFTER_TRAINING, caught.value.message


def test_the_training_sandbox_never_holds_the_scored_split(smoke_env):
    """A process that runs a program opens what the preparation tokenised, without the scored split, and without
    reading any text: a source never prepared on this host is refused, not read."""
    import dataclasses

    from harness.data import DataError
    from harness.sandbox.entry import _data
    from harness.trusted.profiles import get_profile

    profile = get_profile("smoke")
    with pytest.raises(DataError, match="never prepared on this host"):
        _data(dataclasses.replace(profile, vocab_size=profile.vocab_size + 1))
    prepared = _data(profile, prepare=True)
    data = _data(profile)
    assert data.score is None and len(data.monitor) == profile.val_tokens
    assert data.data_hash == prepared.data_hash and np.array_equal(data.monitor, prepared.monitor)


# A forger past every static check: the code runs at the program's load, in the sandbox process, and rewrites the
# training record on its way into the result file.
FORGER = '''
import json as _json
_dumps = _json.dumps


def _forged(obj, *args, **kwargs):
    if isinstance(obj, dict) and isinstance(obj.get("objective"), dict):
        for run in obj["objective"]["runs"]:
            run.update(final_val_loss=0.01, final_monitor_loss=0.01, non_embedding_params=10, attention_params=0)
            run["val_curve"][-1] = [run["val_curve"][-1][0], 0.01]
    return _dumps(obj, *args, **kwargs)


_json.dumps = _forged
'''


def _count_scorer_starts(monkeypatch) -> list[str]:
    """The sandbox's log as it stood at each start of the scorer."""
    starts, start = [], executor._start_scorer

    def counted(mode, request, tmp, *args):
        starts.append((tmp / "sandbox.log").read_text())
        return start(mode, request, tmp, *args)

    monkeypatch.setattr(executor, "_start_scorer", counted)
    return starts


def test_the_scorer_starts_once_the_training_begins_and_never_for_a_rejected_program(smoke_env, monkeypatch):
    prepared = prepare(security.FRAMEWORK)
    starts = _count_scorer_starts(monkeypatch)
    rejected = adversarial.BY_NAME["raises_in_forward"]
    request = sandbox_request(security.FRAMEWORK, prepared["profile"], prepared["ledger"], source=rejected.source)
    run = executor.run_sandbox_here("evaluate", request, 180.0, 8192)
    assert run.result["reason"] == rejected.reason and starts == [] and "scoring" not in run.execution


def test_a_forged_training_record_moves_no_loss_and_no_count(smoke_env, monkeypatch):
    prepared = prepare(security.FRAMEWORK)
    starts = _count_scorer_starts(monkeypatch)
    launched, start_limited = [], executor.start_limited
    monkeypatch.setattr(executor, "start_limited", lambda cmd, log, env, **kwargs: launched.append((cmd, env))
                        or start_limited(cmd, log, env, **kwargs))
    request = sandbox_request(security.FRAMEWORK, prepared["profile"], prepared["ledger"], source=security.SEED + FORGER)
    run = executor.run_sandbox_here("evaluate", request, 180.0, 8192)
    assert run.outcome == "exited" and run.result["reason"] == "ok", run.log
    assert len(starts) == 1 and TRAINING_BEGINS in starts[0]  # started while the training ran, not before
    # The scorer's scratch and compile caches are its own, never in the sandbox's run folder, which the forger writes.
    [scorer_env] = [env for cmd, env in launched if "harness.scorer" in cmd]
    [sandbox_env] = [env for cmd, env in launched if "harness.sandbox" in cmd]
    assert Path(scorer_env["TMPDIR"]).parent.name.startswith("harness-scorer-")
    assert Path(sandbox_env["TMPDIR"]).parent.name.startswith("harness-sandbox-")
    assert all(scorer_env[k] != sandbox_env[k] for k in executor.scratch_environment(Path("/x")))
    runs = run.result["objective"]["runs"]
    assert runs[0]["final_monitor_loss"] == 0.01, "the forger ran"
    objective = objective_from_untrusted(run.result["objective"], prepared["profile"])
    # the seed, trained the same way: the scorer measures exactly the baseline's loss and size
    assert objective["final_loss"] == prepared["baseline"]["final_loss"] != 0.01
    assert runs[0]["non_embedding_params"] == prepared["baseline"]["runs"][0]["non_embedding_params"] > 10
    assert run.execution["scoring"]["canaries"] >= 4


# Causal in training, in the gate and in the in-sandbox test of the trained model (8 windows); it reads the next
# token only in large evaluation batches, as the scored pass runs them.
LEAKS_WHEN_SCORED = security.Attack(
    "leak_in_large_evaluation_batches", "scoring_split",
    "if not self.training and x.shape[0] >= 32:\n    x = x + torch.roll(x, -1, dims=1)")


def test_a_model_that_reads_the_future_only_when_scored_is_rejected(smoke_env, tmp_path):
    path = tmp_path / "candidate.py"
    path.write_text(LEAKS_WHEN_SCORED.source("unused", "UNUSED"))
    result = evaluate(security.FRAMEWORK, str(path))
    assert result.artifacts["reason"] == Reason.LEAK_AFTER_TRAINING.value, result.artifacts["message"]
    assert result.metrics["combined_score"] == 0.0
    assert "reads future tokens" in result.artifacts["message"]


def _leaks_in_large_batches(when_scored: str, top: str = "", init: str = "") -> str:
    """A program whose attention reads the whole window in batches of 16 and more (the training's and the scored
    pass's) and is causal in the gate's smaller ones; ``when_scored`` (statements on its output ``y``, unindented)
    runs only in the scored pass, without gradients; ``top`` goes before the class."""
    body = "\n".join("            " + line for line in when_scored.strip("\n").splitlines())
    return adversarial.with_block(f'''{top}
class {adversarial.CLASS}(nn.Module):
    def __init__(self, d_model, n_heads, dropout=0.1, max_seq_len=128):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model){init}

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.n_heads)
        if b < 16:
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            scores = scores.masked_fill(~mask, float("-inf"))
        y = self.out((torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, t, d))
        if b >= 16 and not torch.is_grad_enabled():
{body}
        return y
''')


# When scored, it hands each window the states it gave the earlier window that shares its longest prefix, from a
# store it keeps (once at the top of the block, where the policy now refuses a dict; here on the instance, written
# only in the scored pass, where the gate's checks of state do not look). With every window in one process it
# passed every test of the scorer and scored above the same attention made causal (1.13 against 1.09 at smoke). It
# matches windows on four channels of each position, which tell tokens apart: comparing all of them cost more than
# the FLOP audit of the scoring allows.
REPLAYS_EARLIER_WINDOWS = _leaks_in_large_batches("""
key = str(t)
_SEEN = self.seen
xs, ys = _SEEN.get(key, (x[:0], y[:0]))
y = y.clone()
for r in range(b):
    if xs.shape[0] > 0:
        shared = (xs[..., :4] == x[r, :, :4]).all(-1).long().cumprod(-1).sum(-1)
        best = int(shared.argmax())
        y[r, : int(shared[best])] = ys[best, : int(shared[best])]
    xs, ys = torch.cat([xs, x[r : r + 1]]), torch.cat([ys, y[r : r + 1]])
_SEEN[key] = (xs, ys)
""", init="\n        self.seen = dict()")


# A buffer written by hand during training, where no check of the gate looks (the monitoring evaluation: eval mode,
# no gradients, the evaluation batch), is a weight the parameter count never saw. The output never depends on it,
# so the scored forward pass shows nothing; the trusted scorer finds the trained buffer unlike the one construction
# makes.
WRITES_A_BUFFER_WHILE_MONITORED = security.Attack(
    "buffer_written_while_monitored", "patching",
    "if x.shape[0] >= 64 and not self.training and not torch.is_grad_enabled() and float(self.seen) == 0.0:\n"
    "    self.seen.add_(1.0)", reason="statefulness", init='self.register_buffer("seen", torch.zeros(()))')


def test_a_buffer_written_during_training_is_named_and_never_scored(smoke_env, tmp_path):
    path = tmp_path / "candidate.py"
    path.write_text(WRITES_A_BUFFER_WHILE_MONITORED.source("unused", "UNUSED"))
    result = evaluate(security.FRAMEWORK, str(path))
    assert result.artifacts["reason"] == Reason.STATEFULNESS.value, result.artifacts["message"]
    assert result.metrics["combined_score"] == 0.0
    assert "training changed 'blocks.0.attn.seen'" in result.artifacts["message"]


def test_a_forward_pass_that_replays_earlier_windows_is_rejected(smoke_env, tmp_path):
    """It reads the future, and a window's states depend on the windows run before it: which test sees it first
    depends on the secret layout (a duplicate whose first token another window shares, or a canary)."""
    path = tmp_path / "candidate.py"
    path.write_text(REPLAYS_EARLIER_WINDOWS)
    result = evaluate(security.FRAMEWORK, str(path))
    assert result.artifacts["reason"] in (Reason.LEAK_AFTER_TRAINING.value, Reason.BATCH_INDEPENDENCE.value), \
        result.artifacts["message"]
    assert result.metrics["combined_score"] == 0.0 and result.metrics["valid"] == 0.0


# When scored, it also writes one huge value into every channel of its output at position 0. Hidden states compared
# relative to their largest value then differed by 1e-6 at most, canaries included, and it scored as valid.
HIDES_ITS_LEAK_UNDER_ONE_HUGE_VALUE = _leaks_in_large_batches(
    "y = y + torch.nn.functional.one_hot(torch.zeros((), dtype=torch.long), t)[:, None] * 1e6")


def test_a_leak_hidden_under_one_huge_value_is_rejected(smoke_env, tmp_path):
    path = tmp_path / "candidate.py"
    path.write_text(HIDES_ITS_LEAK_UNDER_ONE_HUGE_VALUE)
    result = evaluate(security.FRAMEWORK, str(path))
    assert result.artifacts["reason"] == Reason.LEAK_AFTER_TRAINING.value, result.artifacts["message"]
    assert result.metrics["combined_score"] == 0.0 and "nats: the model reads future tokens" in result.artifacts["message"]


# Past every static check (appended to the program, so it runs wherever the program loads): in a child of the
# forward pass, it tries to read the other part's windows, to write into its folder and into POSIX shared memory
# (which the other could read), to signal the process that started it (signal 0: the permission check alone), to
# make a System V shared-memory segment (which the other could attach to), to open a Unix socket or a socket
# pair (either could be bound in its folder, where the other could reach it by its path), to lock and to watch a
# file both may read (the other could test the lock or see the access), and reads its own windows.
CROSSES_TO_THE_OTHER_PART = """
import ctypes as _ct
import fcntl as _fcntl
import os as _os
import socket as _socket
import sys as _sys
_libc = _ct.CDLL(None, use_errno=True)
def _checked(result):
    if result < 0:
        raise OSError(_ct.get_errno(), "refused")
def _lock(how):
    with open(_sys.executable, "rb") as _f:
        how(_f)
_tmp = _os.environ.get("TMPDIR", "")
if "/forward/" in _tmp:
    _mine = _os.path.dirname(_tmp)
    _other = _os.path.join(_os.path.dirname(_mine), "1" if _os.path.basename(_mine) == "0" else "0")
    _seen = []
    for _what, _do in (("read", lambda: open(_os.path.join(_other, "inputs.npy"), "rb").read(1)),
                       ("write", lambda: open(_os.path.join(_other, "marker"), "w").write("x")),
                       ("shm", lambda: open("{shm}", "w").write("x")),
                       ("signal", lambda: _os.kill(_os.getppid(), 0)),
                       ("sysv", lambda: _checked(_libc.shmget(0x5eed, 4096, 0o1600))),
                       ("socket", lambda: _socket.socket(_socket.AF_UNIX).close()),
                       ("socketpair", lambda: [_s.close() for _s in _socket.socketpair()]),
                       ("flock", lambda: _lock(lambda _f: _fcntl.flock(_f, _fcntl.LOCK_SH | _fcntl.LOCK_NB))),
                       ("lockf", lambda: _lock(lambda _f: _fcntl.fcntl(_f, _fcntl.F_GETLK, bytes(32)))),
                       ("watch", lambda: _checked(_libc.inotify_init1(0))),
                       ("own", lambda: open(_os.path.join(_mine, "inputs.npy"), "rb").read(1)),
                       ("system", lambda: open("/etc/passwd", "rb").read(1)),
                       # Nothing of the data: with the tokenizer and the text, a part could rebuild the scored split.
                       ("data", lambda: _os.listdir(_os.path.join(_os.environ["HARNESS_CACHE"], "tokens")))):
        try:
            _do()
            _seen.append(_what + " succeeded")
        except OSError as _e:
            _seen.append(_what + " " + _os.strerror(_e.errno))
    raise RuntimeError("outcomes: " + ", ".join(_seen))
"""


@pytest.mark.skipif(confine.unavailable_reason(security.DEVICE) is not None
                    or not confine.device_layers(security.DEVICE).files,
                    reason=f"a sandbox on {security.DEVICE} gets no Landlock here")
def test_a_part_of_the_forward_pass_can_neither_read_nor_write_the_other_parts_folder(smoke_env, monkeypatch):
    left = []
    score = executor._score

    def score_and_look(mode, run, private, *args):
        score(mode, run, private, *args)
        left.extend(private.glob("forward/*/marker"))

    monkeypatch.setattr(executor, "_score", score_and_look)
    prepared = prepare(security.FRAMEWORK)
    shm = Path("/dev/shm") / f"harness-test-{uuid.uuid4().hex}"
    request = sandbox_request(security.FRAMEWORK, prepared["profile"], prepared["ledger"],
                              source=security.SEED + CROSSES_TO_THE_OTHER_PART.replace("{shm}", str(shm)))
    try:
        run = executor.run_sandbox_here("evaluate", request, 180.0, 8192)
        assert run.result["reason"] == "crash", run.result
        layers = confine.device_layers(security.DEVICE)
        # What is not in the forward pass's private root does not exist there; Landlock refuses it otherwise.
        absent = "No such file or directory" if layers.root else "Permission denied"
        # On CUDA the children may write shared memory: the driver's check ran with it (confine.device_layers).
        shm_outcome = "shm succeeded" if security.DEVICE == "cuda" else f"shm {absent}"
        # The scopes (Landlock ABI 6) keep a part from signalling outside its own ruleset.
        signal = "Operation not permitted" if confine.landlock_abi() >= confine.SCOPES_ABI else "succeeded"
        # System V IPC: refused by the seccomp filter, where the sandbox has it.
        sysv = "Operation not permitted" if layers.seccomp else "succeeded"
        # No socket, lock or watch where the parts are kept apart (the scoring record's forward_parts_apart).
        apart = layers.seccomp and signal != "succeeded" and security.DEVICE == "cpu"
        refused = "Operation not permitted" if apart else "succeeded"
        assert (f"outcomes: read Permission denied, write Permission denied, {shm_outcome}, signal {signal}, "
                f"sysv {sysv}, socket {refused}, socketpair {refused}, flock {refused}, lockf {refused}, "
                f"watch {refused}, own succeeded, system succeeded, data {absent}"
                in run.result["message"]), run.result["message"]
        assert left == [], "a part wrote into the other's folder"
        assert shm.exists() == (security.DEVICE == "cuda")
    finally:
        shm.unlink(missing_ok=True)


def test_a_part_that_fails_before_its_program_loads_is_the_harness_not_the_candidate(tmp_path, monkeypatch):
    """The forward sandbox's record says which parts were set up before the program loaded: a part whose own set-up
    failed (its folder is gone, so it cannot open its log) is ``infrastructure``; a part set up whose program then
    died without a record is the candidate's ``crash``."""
    import os

    from harness.sandbox import entry
    from harness.scorer import score

    monkeypatch.setattr(entry, "forward_part", lambda request, folder: os._exit(3))  # the program dies
    parts = [tmp_path / "gone", tmp_path / "kept"]
    parts[1].mkdir()
    record = entry.forward({"parts": [str(p) for p in parts], "landlock": False})
    assert record["confined"] == [False, True]
    assert not (parts[1] / "result.json").exists()
    with pytest.raises(score.Infrastructure, match="failed in its set-up, before the program loaded"):
        score.check_part(parts[0], record["confined"][0], "")
    with pytest.raises(score.Rejection) as crashed:
        score.check_part(parts[1], record["confined"][1], "")
    assert crashed.value.reason == Reason.CRASH

    # The scorer believes the record only where the parts are apart: elsewhere a part could rewrite it, or take
    # the other's byte, to turn its own crash into the harness's failure.
    path = tmp_path / "record.json"
    path.write_text(json.dumps(record))
    assert score.parts_set_up(path, 2, apart=True) == [False, True]
    assert score.parts_set_up(path, 2, apart=False) == [True, True]
    for forged in ({"confined": [False]}, {"confined": [0, 1]}, {"confined": "no"}, {}):
        path.write_text(json.dumps(forged))
        assert score.parts_set_up(path, 2, apart=True) == [True, True]
    assert score.parts_set_up(tmp_path / "missing.json", 2, apart=True) == [True, True]


def test_a_scored_split_changed_on_disk_after_the_baseline_is_tampering(smoke_env, tmp_path, monkeypatch):
    """Where files are not confined (CUDA, no Landlock) the token cache is writable by the sandbox: a split rewritten
    there (here by the test, as a candidate past the static policy could) is never scored against a baseline
    measured on the original. A copy of the session's cache, so that the baseline is the session's."""
    import shutil

    prepared = prepare("ttr")
    for folder in ("tokens", "scored"):
        shutil.copytree(smoke_env / "cache" / folder, tmp_path / "cache" / folder)
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    [entry] = (tmp_path / "cache" / "scored").glob(f"{prepared['fingerprint']['data_hash']}-*")
    tokens = np.load(entry / "score.npy")
    tokens[: prepared["profile"].val_tokens] = tokens[0]  # one token repeated: trivially predictable
    np.save(entry / "score.npy", tokens)
    candidate = tmp_path / "seed.py"
    candidate.write_text(security.TRAINED_SEED)
    result = evaluate("ttr", str(candidate))
    assert result.artifacts["reason"] == "tampering", result.artifacts["message"]
    assert "scored split on disk is not the one the baseline was scored on" in result.artifacts["message"]
    assert result.metrics["combined_score"] == 0.0


# Random features drawn at construction and kept as a persistent buffer: legitimate, and different for every seed.
RANDOM_FEATURES = security.Attack(
    "random_features", "legitimate", "x = x + x @ self.mix * 0.01", reason="ok",
    init='self.register_buffer("mix", torch.randn(d_model, d_model) / math.sqrt(d_model))')


def test_a_random_buffer_is_rebuilt_with_the_training_s_own_seed(smoke_env, tmp_path):
    """A validation job trains with its seed (42, ...), not the profile's: the scored pass builds the model with
    the same one, so the buffers it builds are the trained ones and nothing is taken for state."""
    from harness.validation.jobs import TrainJob, run_training_job

    path = tmp_path / "candidate.py"
    path.write_text(RANDOM_FEATURES.source("unused", "UNUSED"))
    profile = get_profile(security.PROFILE)
    fingerprint = prepare(security.FRAMEWORK)["fingerprint"]["id"]
    result = run_training_job(TrainJob(security.FRAMEWORK, path, profile, 42, {}, "objective", fingerprint,
                                       profile.hard_limit_s))
    assert result["reason"] == "ok", result.get("message")


# Past every static check: an attention with a buffer that, while the forward pass builds it, looks for the trained
# tensors its part holds. A part built its buffers after loading them, so a constructor that copied them in made its
# construction equal to the training's, and a trained tensor relabelled a buffer (which the parameter count never
# saw) reached the score.
PEEKS_AT_THE_TRAINED_BUFFERS = """
import sys as _sys


def _peek():
    f = _sys._getframe(1)
    while f is not None:
        if f.f_code.co_name == "forward_part":
            held = [name for value in f.f_locals.values() if isinstance(value, dict)
                    for name in (value.get("buffers") or {}) if isinstance(name, str)]
            raise RuntimeError("trained buffers held: " + str(held))
        f = f.f_back
"""


def test_the_forward_pass_never_holds_the_trained_buffers(smoke_env):
    prepared = prepare(security.FRAMEWORK)
    attack = security.Attack("peek", "none", "pass", init='self.register_buffer("scale", torch.ones(1))\n_peek()')
    source = attack.source("unused", "unused").replace(f"class {security.CLASS}(nn.Module):",
                                                       PEEKS_AT_THE_TRAINED_BUFFERS + f"\n\nclass {security.CLASS}(nn.Module):", 1)
    request = sandbox_request(security.FRAMEWORK, prepared["profile"], prepared["ledger"], source=source)
    run = executor.run_sandbox_here("evaluate", request, 180.0, 8192)
    assert run.result["reason"] == "crash", run.result
    assert "trained buffers held: []" in run.result["message"], run.result["message"]


def test_a_part_folder_replaced_by_a_link_is_never_read(tmp_path):
    """The forward pass may write its whole folder: a part's folder moved and a link left in its place would have
    the scorer read the record and the states of the folder the link names."""
    from harness.scorer import score

    work = tmp_path / "forward"
    (work / "elsewhere").mkdir(parents=True)
    (work / "elsewhere" / "result.json").write_text(json.dumps({"reason": "ok"}))
    (work / "0").symlink_to(work / "elsewhere")
    with pytest.raises(score.Rejection) as caught:
        score.check_part(work / "0", True, "", work)
    assert caught.value.reason == Reason.TAMPERING and "replaced the folder" in caught.value.message
    score.check_part(work / "elsewhere", True, "", work)  # the same folder, itself: its record is read
