"""The frozen model: an independent re-implementation of the users' architecture must give the same
output, so that any change to the scaffold (GELU → ReLU, post-norm, untied head, ...) fails here."""

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.trusted.frameworks import FRAMEWORKS, REPO_ROOT
from harness.trusted.profiles import FULL_LADDER
from harness.sandbox.loader import load_attention
from harness import scaffold
from harness.scaffold import build_model, count_params, non_embedding_params, sinusoidal_positions

SEED_CLS = load_attention(FRAMEWORKS["ttr"].seed_source(), "ttr.py")

# Documented in the README: (total, non-embedding) parameters at vocab 16,384 and context 128.
LADDER_PARAMS = {
    (96, 4, 4): (2_020_416, 447_552),
    (128, 4, 4): (2_890_496, 793_344),
    (128, 6, 4): (3_287_040, 1_189_888),
    (192, 6, 6): (5_815_296, 2_669_568),
}


def reference_forward(model, idx):
    """The users' design written out by hand: token embedding × √d + sinusoidal positions, pre-norm blocks
    x + attn(LN(x)) then x + FFN(LN(x)) with FFN = Linear(d,4d) → GELU → Linear(4d,d), final LN, tied head."""
    d = model.tok_emb.weight.shape[1]
    T = idx.shape[1]
    x = model.tok_emb.weight[idx] * math.sqrt(d) + sinusoidal_positions(model.max_seq_len, d)[:T]
    for block in model.blocks:
        x = x + block.attn(F.layer_norm(x, (d,), block.ln_attn.weight, block.ln_attn.bias))
        h = F.layer_norm(x, (d,), block.ln_ffn.weight, block.ln_ffn.bias)
        h = F.linear(h, block.ffn.fc_in.weight, block.ffn.fc_in.bias)
        assert block.ffn.fc_in.weight.shape == (4 * d, d)
        x = x + F.linear(F.gelu(h), block.ffn.fc_out.weight, block.ffn.fc_out.bias)
    x = F.layer_norm(x, (d,), model.ln_final.weight, model.ln_final.bias)
    return x @ model.tok_emb.weight.T


@pytest.mark.parametrize("rung", [(32, 2, 2), (48, 3, 4)])
def test_scaffold_matches_the_written_out_architecture(rung):
    model = build_model(SEED_CLS, rung, vocab_size=97, max_seq_len=16, dropout=0.1, seed=3).eval()
    idx = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(0))
    logits, _ = model(idx)
    torch.testing.assert_close(logits, reference_forward(model, idx), atol=1e-5, rtol=1e-5)


def test_a_swapped_activation_would_be_caught(monkeypatch):
    model = build_model(SEED_CLS, (32, 2, 2), vocab_size=97, max_seq_len=16, dropout=0.0, seed=3).eval()
    idx = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(scaffold, "_gelu", F.relu)  # the function the frozen FFN captured at import
    assert not torch.allclose(model(idx)[0], reference_forward(model, idx), atol=1e-4)


def test_the_frozen_model_computes_with_what_it_captured_at_import(monkeypatch):
    """Replacing torch's functions, the nn classes' methods or a frozen module's forward at run time, as a program
    past the static policy could, changes nothing the frozen parts compute."""
    model = build_model(_RunningMean, (32, 2, 2), vocab_size=97, max_seq_len=16, dropout=0.0, seed=3).eval()
    idx = torch.randint(0, 97, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(idx[:, :-1], idx[:, 1:])
    monkeypatch.setattr(F, "gelu", lambda x, approximate="none": x)
    monkeypatch.setattr(F, "layer_norm", lambda x, *args, **kwargs: x)
    monkeypatch.setattr(F, "cross_entropy", lambda *args, **kwargs: torch.tensor(0.0))
    monkeypatch.setattr(torch, "add", lambda a, b, **kwargs: a)
    monkeypatch.setattr(nn.Linear, "forward", lambda self, x: x)
    monkeypatch.setattr(nn.Embedding, "forward", lambda self, x: torch.zeros(*x.shape, self.embedding_dim))
    for block in model.blocks:
        block.ffn.forward = lambda x: x
        block.ln_ffn.forward = lambda x: x
    with torch.no_grad():
        after = model(idx[:, :-1], idx[:, 1:])
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


class _RunningMean(torch.nn.Module):
    """An attention built from tensor methods only, so that the patches above leave it alone."""

    def __init__(self, d_model, n_heads, dropout=0.0, max_seq_len=16):
        super().__init__()
        self.mix = torch.nn.Parameter(torch.eye(d_model))

    def forward(self, x):
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype).view(1, -1, 1)
        return (x.cumsum(1) / steps) @ self.mix


def test_head_is_tied_to_the_embedding_and_counted_once():
    model = build_model(SEED_CLS, (32, 2, 2), vocab_size=97, max_seq_len=16, dropout=0.1, seed=0)
    assert model.lm_head.weight is model.tok_emb.weight
    assert count_params(model) == sum(p.numel() for p in model.parameters())  # parameters() dedupes ties


def test_ladder_parameter_counts_are_the_documented_ones():
    for rung, (total, non_embedding) in LADDER_PARAMS.items():
        model = build_model(SEED_CLS, rung, vocab_size=16384, max_seq_len=128, dropout=0.1, seed=0)
        assert (count_params(model), non_embedding_params(model)) == (total, non_embedding), rung
    assert set(LADDER_PARAMS) == set(FULL_LADDER)


def test_frozen_initialisation_does_not_depend_on_the_attention():
    """The frozen parts draw from their own generator, so a candidate with more or fewer parameters
    trains from the same embeddings and FFNs as the baseline."""
    other = load_attention(FRAMEWORKS["mm"].seed_source().replace('structure: str = "softmax_dense"',
                                                                  'structure: str = "quasiseparable"'), "mm.py")
    a = build_model(SEED_CLS, (32, 2, 2), 97, 16, 0.1, seed=5)
    b = build_model(other, (32, 2, 2), 97, 16, 0.1, seed=5)
    assert count_params(a.blocks[0].attn) != count_params(b.blocks[0].attn)
    torch.testing.assert_close(a.tok_emb.weight, b.tok_emb.weight, rtol=0, atol=0)
    for x, y in zip(a.blocks, b.blocks):
        torch.testing.assert_close(x.ffn.fc_in.weight, y.ffn.fc_in.weight, rtol=0, atol=0)


def test_sequences_longer_than_the_context_are_refused():
    model = build_model(SEED_CLS, (32, 2, 2), 97, 16, 0.1, seed=0)
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        model(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.slow
def test_harness_train_smoke_learns_synthetic_text_within_a_minute(smoke_env, tmp_path):
    out = tmp_path / "run.json"
    env = {**os.environ, "HARNESS_PROFILE": "smoke"}
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "train", "initial_programs/ttr.py", "--out", str(out)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "step 300/300" in proc.stdout  # progress is printed
    import json

    record = json.loads(out.read_text())
    run = record["runs"][0]
    assert run["final_monitor_loss"] < 0.6 * math.log(512)  # well below ln(vocab) = 6.24
    assert run["wall_s"] < 60.0
    fp = record["fingerprint"]
    for key in ("hardware", "profile", "data_hash", "tokenizer_hash", "harness_code_hash", "train_seed", "id"):
        assert fp[key] not in (None, "")
