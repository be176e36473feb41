"""Every op a block can reach is either costed by the FLOP audit or refused by name, with what to use instead.

The sweep takes its inputs from torch's own catalogues of sample inputs: ``op_db`` (every function of
``torch.nn.functional``, ``torch.fft``, ``torch.linalg``, ``torch.special``, ``torch`` and the tensor methods) and
``module_db`` (the ``torch.nn`` layers). Each runs forward and backward under the audit. An op that the audit cannot
cost must be in ``flops.REFUSED``, whose entry becomes the ``unaccounted_op`` message. A new torch that adds an op
fails this test until the op is costed or refused.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from harness.sandbox.flops import REFUSED, audit_flops, classify_op, refused_advice, unaccounted_message

pytest.importorskip("expecttest", reason="torch's op catalogue (torch.testing._internal) needs expecttest")

# The policy refuses private names and these namespaces; their ops are out of a block's reach.
_UNREACHABLE_PREFIXES = ("_", "jiterator", "sparse.", "masked.", "signal.", "nn.functional._")


def _reachable(name: str) -> bool:
    return not name.startswith(_UNREACHABLE_PREFIXES)


def _outputs(out) -> list[torch.Tensor]:
    outs = out if isinstance(out, (tuple, list)) else [out]
    return [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad and (o.is_floating_point() or o.is_complex())]


def _forward_and_backward(call) -> None:
    outs = _outputs(call())
    if outs:
        sum((o.abs() if o.is_complex() else o).sum() for o in outs).backward()


def _audit(call) -> dict[str, int] | None:
    try:
        return audit_flops(lambda: _forward_and_backward(call)).unknown_ops
    except Exception:  # noqa: BLE001 - a sample torch itself cannot run here (a CUDA-only op) has no ops to cost
        return None


def _op_samples():
    from torch.testing._internal.common_methods_invocations import op_db

    for op in op_db:
        if not _reachable(op.name) or torch.float32 not in op.supported_dtypes("cpu"):
            continue
        try:
            # The raw generator, not op.sample_inputs: its wrapper walks the whole stack (inspect.stack) for every
            # sample, which was three quarters of the sweep's time.
            sample = next(iter(op.sample_inputs_func(op, "cpu", torch.float32, op.supports_autograd)), None)
        except Exception:  # noqa: BLE001 - see _audit
            continue
        if sample is not None:
            yield op.name, lambda op=op, s=sample: op(s.input, *s.args, **s.kwargs)


def _module_samples():
    from torch.testing._internal.common_modules import module_db

    for info in module_db:
        try:
            sample = next(iter(info.module_inputs_func(info, device="cpu", dtype=torch.float32, requires_grad=True,
                                                       training=True)), None)
            if sample is None or sample.forward_input is None:
                continue
            module = info.module_cls(*sample.constructor_input.args, **sample.constructor_input.kwargs)
        except Exception:  # noqa: BLE001 - see _audit
            continue
        yield info.name, lambda m=module, f=sample.forward_input: m(*f.args, **f.kwargs)


@pytest.fixture(scope="module")
def sweep() -> dict[str, dict]:
    """{"ran": [names], "unknown": {op: [names that reached it]}} over both catalogues."""
    ran, unknown = [], {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, call in [*_op_samples(), *_module_samples()]:
                ops = _audit(call)
                if ops is None:
                    continue
                ran.append(name)
                for op in ops:
                    unknown.setdefault(op, []).append(name)
    finally:
        torch.set_num_threads(threads)
    return {"ran": ran, "unknown": unknown}


def test_the_sweep_covers_the_catalogues(sweep):
    ran = set(sweep["ran"])
    assert len(ran) > 500
    for name in ("nn.functional.conv1d", "nn.functional.scaled_dot_product_attention", "fft.rfft", "linalg.solve",
                 "cumsum", "special.erfcx", "nn.LSTM", "nn.GRU", "nn.MultiheadAttention",
                 "nn.TransformerEncoderLayer"):
        assert name in ran, name
    assert "aten.grid_sampler_2d.default" in sweep["unknown"]  # the sweep does see what the audit cannot cost


def test_every_reachable_op_is_costed_or_refused_by_name(sweep):
    unrefused = {op: names[:3] for op, names in sweep["unknown"].items() if refused_advice(op) is None}
    assert not unrefused, f"ops the audit neither costs nor refuses: {unrefused}"


def test_the_refused_and_costed_tables_are_disjoint():
    for name in REFUSED:
        assert classify_op(name if "::" in name or "." in name else f"aten.{name}") is None, name


def test_an_unaccounted_op_message_names_the_op_and_what_to_use_instead():
    message = unaccounted_message({"aten.grid_sampler_2d.default": 2, "mylib.opaque.default": 1})
    assert "aten.grid_sampler_2d" in message and REFUSED["grid_sampler_2d"] in message
    assert "mylib.opaque" in message and "custom" in message

