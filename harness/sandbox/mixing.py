"""Effective token-mixing matrices of a trained model's attention layers.

For each attention module, on one validation sequence, the Jacobian of the module's output with respect to its
own input (the LayerNorm'd residual stream it receives in the block), with absolute values summed over both
channel axes: ``M[t][i] = sum_{c, c'} |d y_{t,c} / d x_{i,c'}|``. Each row is then normalised to sum 1, so that
the patterns of different layers and programs are comparable. It is measured, not assumed: a mechanism that
reads the future shows up above the diagonal. For a custom autograd Function it is the Jacobian that the
Function's backward declares; the gate's perturbation probes, not this, judge what its forward reads.

This module runs in the sandbox, next to candidate code. It imports nothing from the trusted side (the model is
duck-typed: ``model.blocks[i].attn``) and nothing from validation, analysis, proposer or diagnostics.
"""

from __future__ import annotations

import torch
import torch.func
import torch.nn as nn

DEFAULT_CHUNK = 128  # basis vectors (output position, output channel) pulled back per batched VJP
SIGNIFICANT_DIGITS = 5


class MixingError(ValueError):
    """The attention module cannot be measured: wrong output shape or a tensor subclass returned."""


def _round(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def _plain(y, what: str) -> torch.Tensor:
    if not isinstance(y, torch.Tensor) or (type(y) is not torch.Tensor and not _is_functorch_wrapper(y)):
        raise MixingError(f"{what} must return a plain torch.Tensor, not {type(y).__qualname__}")
    return y


def _is_functorch_wrapper(y) -> bool:
    try:
        from torch._C._functorch import is_functorch_wrapped_tensor
    except ImportError:  # pragma: no cover - older torch
        return False
    return is_functorch_wrapped_tensor(y)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _capture_inputs(model: nn.Module, attns: list[nn.Module], idx: torch.Tensor) -> list[torch.Tensor]:
    """Run the model once and keep the input each attention module receives (hooks removed even on error)."""
    captured: list[torch.Tensor | None] = [None] * len(attns)
    handles = []

    def make_hook(i):
        def hook(_module, args, kwargs):
            x = args[0] if args else next(iter(kwargs.values()))
            captured[i] = x.detach().clone()

        return hook

    try:
        for i, attn in enumerate(attns):
            handles.append(attn.register_forward_pre_hook(make_hook(i), with_kwargs=True))
        with torch.no_grad():
            model(idx)
    finally:
        for handle in handles:
            handle.remove()
    missing = [i for i, x in enumerate(captured) if x is None]
    if missing:
        raise RuntimeError(f"attention layers {missing} were not called in the forward pass")
    return captured  # type: ignore[return-value]


def _abs_jacobian_vmap(attn: nn.Module, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """sum_{c,c'} |J| as (T, T), via one forward and batched VJPs over one-hot output basis vectors."""
    from torch.func import functional_call, vjp, vmap

    _, T, C = x.shape
    # The module's own tensors enter detached: torch.func's VJP is differentiable, so parameters that require
    # grad would make every pulled-back vector carry (and keep alive) a graph back to them.
    state = {name: t.detach() for name, t in attn.named_parameters(remove_duplicate=False)}
    state.update({name: t.detach() for name, t in attn.named_buffers(remove_duplicate=False)})

    def f(inp):
        return _plain(functional_call(attn, state, (inp,), tie_weights=False), "the attention's forward")

    y, pullback = vjp(f, x)
    if y.shape != x.shape:
        raise MixingError(f"the attention maps {tuple(x.shape)} to {tuple(y.shape)}; expected the same shape")
    batched = vmap(lambda v: pullback(v)[0])
    M = torch.zeros(T, T, dtype=torch.float64, device=x.device)
    n = T * C
    for start in range(0, n, chunk):
        flat = torch.arange(start, min(n, start + chunk), device=x.device)
        basis = torch.zeros(len(flat), T * C, dtype=y.dtype, device=x.device)
        basis[torch.arange(len(flat), device=x.device), flat] = 1
        grads = batched(basis.view(len(flat), 1, T, C))  # (k, 1, T, C): d y_{t,c} / d x
        rows = grads.abs().to(torch.float64).sum(dim=(1, 3))  # (k, T) summed over input channels
        M.index_add_(0, flat // C, rows)  # sum over output channels of the same position t
    return M


def _abs_jacobian_loop(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The same, one autograd.grad per (t, c): for modules that vmap cannot batch (slow but general)."""
    _, T, C = x.shape
    x = x.clone().requires_grad_(True)
    state = {name: t.detach() for name, t in attn.named_parameters(remove_duplicate=False)}
    state.update({name: t.detach() for name, t in attn.named_buffers(remove_duplicate=False)})
    y = _plain(torch.func.functional_call(attn, state, (x,), tie_weights=False), "the attention's forward")
    if y.shape != x.shape:
        raise MixingError(f"the attention maps {tuple(x.shape)} to {tuple(y.shape)}; expected the same shape")
    M = torch.zeros(T, T, dtype=torch.float64, device=x.device)
    for t in range(T):
        for c in range(C):
            (g,) = torch.autograd.grad(y[0, t, c], x, retain_graph=True, allow_unused=True)
            if g is not None:
                M[t] += g[0].detach().abs().to(torch.float64).sum(dim=-1)
    return M


def _layer_matrix(attn: nn.Module, x: torch.Tensor, chunk: int) -> torch.Tensor:
    with torch.enable_grad():
        try:
            M = _abs_jacobian_vmap(attn, x, chunk)
        except MixingError:
            raise
        except Exception:  # noqa: BLE001 - an op vmap cannot batch: fall back to the plain loop
            M = _abs_jacobian_loop(attn, x)
    sums = M.sum(dim=1, keepdim=True)
    return torch.where(sums > 0, M / torch.where(sums > 0, sums, torch.ones_like(sums)), torch.zeros_like(M))


def mixing_matrices(model: nn.Module, tokens: torch.Tensor, max_len: int | None = None, *,
                    chunk: int = DEFAULT_CHUNK) -> list[list[list[float]]]:
    """Effective token-mixing matrix of every attention layer, in order, on one sequence.

    ``tokens``: one sequence (1-D LongTensor). T = min(len(tokens), max_len, model.max_seq_len); the first T
    tokens are used. The model runs once (eval mode, no grad) with forward pre-hooks that capture the input
    of each ``block.attn``; then, per layer, the Jacobian of that attention module alone (eval mode) at its
    captured input gives ``M[t][i] = sum_{c, c'} |d y_{t,c} / d x_{i,c'}|``, computed exactly with batched
    VJPs over one-hot output vectors (never the full (T, C, T, C) tensor), in the input's dtype (float64
    works), accumulated in float64.

    Each row t is NORMALISED to sum 1 over i (a row that sums to 0 stays all 0), so that patterns are
    comparable across layers and programs; absolute scale is discarded. Every entry is computed, including
    i > t, so a non-causal mechanism shows up above the diagonal.

    Returns n_layers lists of T rows of T plain Python floats, rounded to 5 significant digits. The model is
    left as it was: every module's training flag is restored, hooks are removed (also on error), and no
    ``.grad`` is written to any parameter.
    """
    if tokens.dim() == 2 and tokens.shape[0] == 1:
        tokens = tokens[0]
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be one sequence (1-D), got shape {tuple(tokens.shape)}")
    T = len(tokens)
    if max_len is not None:
        T = min(T, int(max_len))
    if getattr(model, "max_seq_len", None):
        T = min(T, int(model.max_seq_len))
    if T < 1:
        raise ValueError("need at least one token")
    attns = [block.attn for block in model.blocks]
    idx = tokens[:T].to(device=_model_device(model), dtype=torch.long)[None, :]

    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        inputs = _capture_inputs(model, attns, idx)
        matrices = [_layer_matrix(attn, x, max(1, int(chunk))) for attn, x in zip(attns, inputs)]
    finally:
        for module, training in modes:
            module.training = training
    return [[[_round(v) for v in row] for row in M.cpu().tolist()] for M in matrices]
