"""The frozen model: one definition of everything around the evolvable attention class.

Decoder-only LM: token embedding (tied with the LM head, scaled by √d) + sinusoidal positions, pre-norm blocks
``x + attn(LN(x))`` then ``x + FFN(LN(x))`` with FFN = Linear(d, 4d) → GELU → Linear(4d, d),
dropout, a final LayerNorm. The attention class is the only thing a program supplies; the scaffold
constructs it with the keyword arguments ``d_model, n_heads, dropout, max_seq_len``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.trusted.frameworks import ATTENTION_KWARGS  # noqa: F401 - also read here by stored programs and tools

# The functions the frozen model computes with, captured when this module is imported, before any program loads: a
# program that replaces torch's functions or the nn classes' methods at run time (past the static policy, and
# between two of the run-time snapshot's checks) still cannot change what the frozen parts compute. The nn modules
# below hold the parameters; their forward methods are not called.
_linear, _layer_norm, _gelu, _dropout, _embedding, _cross_entropy = (
    F.linear, F.layer_norm, F.gelu, F.dropout, F.embedding, F.cross_entropy)
_add, _mul, _narrow = torch.add, torch.mul, torch.narrow


def _apply_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return _linear(x, layer.weight, layer.bias)


def apply_layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return _layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _apply_dropout(drop: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    return _dropout(x, drop.p, drop.training, drop.inplace)


def sinusoidal_positions(max_seq_len: int, d_model: int) -> torch.Tensor:
    position = torch.arange(max_seq_len, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_seq_len, d_model)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq[: d_model // 2])
    return table


class FeedForward(nn.Module):
    def __init__(self, d_model: int, dropout: float):
        super().__init__()
        self.fc_in = nn.Linear(d_model, 4 * d_model)
        self.fc_out = nn.Linear(4 * d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _apply_dropout(self.drop, _apply_linear(self.fc_out, _gelu(_apply_linear(self.fc_in, x))))


class TensorSubclassError(TypeError):
    """The attention returned a ``torch.Tensor`` subclass: its ``__torch_function__`` would run inside the frozen
    model's operations (the residual, the FFN, the head and the loss) and could rewrite them."""


def plain_tensor(value, what: str):
    if type(value) is not torch.Tensor:
        raise TensorSubclassError(f"{what} must return a plain torch.Tensor, not {type(value).__qualname__}")
    return value


class Block(nn.Module):
    def __init__(self, attention: nn.Module, d_model: int, dropout: float):
        super().__init__()
        self.ln_attn = nn.LayerNorm(d_model)
        self.attn = attention
        self.drop = nn.Dropout(dropout)
        self.ln_ffn = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = plain_tensor(self.attn(apply_layer_norm(self.ln_attn, x)), "the attention's forward")
        x = _add(x, _apply_dropout(self.drop, mixed))
        return _add(x, FeedForward.forward(self.ffn, apply_layer_norm(self.ln_ffn, x)))


class LanguageModel(nn.Module):
    def __init__(
        self,
        attention_cls: type,
        vocab_size: int,
        d_model: int,
        n_layers: int,
        n_heads: int,
        max_seq_len: int,
        dropout: float = 0.1,
        seed: int = 0,
    ):
        super().__init__()
        self.max_seq_len = max_seq_len
        self.embed_scale = math.sqrt(d_model)
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.register_buffer("pos_emb", sinusoidal_positions(max_seq_len, d_model), persistent=False)
        self.drop = nn.Dropout(dropout)
        blocks = []
        for layer in range(n_layers):
            # Each attention is built under its own seed, so that its initialisation does not depend on
            # what the other layers or the frozen parts draw, and the frozen parts' does not depend on it.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed * 1009 + layer + 1)
                attention = attention_cls(d_model=d_model, n_heads=n_heads, dropout=dropout, max_seq_len=max_seq_len)
            blocks.append(Block(attention, d_model, dropout))
        self.blocks = nn.ModuleList(blocks)
        self.ln_final = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight
        self._init_frozen(seed)

    def _init_frozen(self, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            # Vaswani et al.: embeddings of std d^-1/2, scaled by d^1/2 on input, so that tokens and the
            # unit-amplitude sinusoidal positions enter at the same scale and the tied head starts O(1).
            self.tok_emb.weight.normal_(0.0, self.embed_scale ** -1, generator=generator)
            for block in self.blocks:
                for linear in (block.ffn.fc_in, block.ffn.fc_out):
                    linear.weight.normal_(0.0, 0.02, generator=generator)
                    linear.bias.zero_()

    def frozen_modules(self) -> list[nn.Module]:
        """Everything that is not an attention module (for parity counts)."""
        return [self.tok_emb, self.ln_final] + [
            m for b in self.blocks for m in (b.ln_attn, b.ln_ffn, b.ffn)
        ]

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """The residual stream after the last block, before the final norm: what the forward-only sandbox hands
        to the trusted scorer, which applies the final norm, the tied head and the loss itself."""
        T = idx.shape[1]
        if T > self.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len {self.max_seq_len}")
        tokens = _mul(_embedding(idx, self.tok_emb.weight), self.embed_scale)
        x = _apply_dropout(self.drop, _add(tokens, _narrow(self.pos_emb, 0, 0, T)))
        for block in self.blocks:
            x = Block.forward(block, x)
        return x

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean"):
        logits = _linear(apply_layer_norm(self.ln_final, self.hidden(idx)), self.lm_head.weight)
        if targets is None:
            return logits, None
        loss = _cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1), reduction=reduction)
        if reduction == "none":
            loss = loss.view(targets.shape)
        return logits, loss


def count_params(module: nn.Module, trainable_only: bool = True) -> int:
    """Unique parameters (tied weights once)."""
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def non_embedding_params(model: LanguageModel) -> int:
    return count_params(model) - model.tok_emb.weight.numel()


def build_model(attention_cls: type, rung: tuple, vocab_size: int, max_seq_len: int, dropout: float, seed: int):
    d_model, n_layers, n_heads = rung
    return LanguageModel(attention_cls, vocab_size, d_model, n_layers, n_heads, max_seq_len, dropout, seed)


def forward_backward_demo(attention_cls: type) -> None:
    """What ``python initial_programs/<fw>.py`` runs: build the reference rung and do one step."""
    from harness.trusted.profiles import FULL_LADDER

    torch.manual_seed(0)
    rung = FULL_LADDER[1]
    model = build_model(attention_cls, rung, vocab_size=16384, max_seq_len=128, dropout=0.1, seed=0)
    idx = torch.randint(0, 16384, (2, 128))
    _, loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    grads = sum(1 for p in model.parameters() if p.grad is not None)
    print(
        f"{attention_cls.__name__}: rung {rung}, {non_embedding_params(model):,} non-embedding params, "
        f"loss {loss.item():.4f} (ln V = {math.log(16384):.4f}), {grads} parameter tensors got gradients"
    )
