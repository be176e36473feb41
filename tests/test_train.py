"""The training engine: determinism, the schedule, the exact non-finite step, the compile fallback, the fast path
against the plain eager loop, and concurrent rungs giving the sequential results."""

import dataclasses
import math

import pytest
import torch

from processes import exit_handler_site
from harness.sandbox import train as train_mod
from harness.diagnostics.bench import reference_loop
from harness.data import load_token_data
from harness.trusted.frameworks import FRAMEWORKS
from harness.sandbox.objective import TrainingFailure, run_objective, train_rungs_concurrently
from harness.trusted.profiles import get_profile
from harness.sandbox.loader import load_attention
from harness.sandbox.train import LossMonitor, lr_at, train, train_curve_interval

SEED_FW = FRAMEWORKS["cd"]
SEED_CLS = load_attention(SEED_FW.seed_source(), str(SEED_FW.seed_path))
SHORT = dataclasses.replace(get_profile("smoke"), steps=40, warmup_steps=5, eval_interval_steps=20)
NAN_AT_STEP = 13

# An attention class that trains normally and returns NaN from its 13th training-mode call on: the loss of
# step 13 is the first non-finite one. Evaluation-mode calls do not count.
NAN_PROGRAM = f'''
import torch
import torch.nn as nn


class NanAtStep(nn.Module):
    def __init__(self, d_model, n_heads, dropout=0.1, max_seq_len=128):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)
        self.calls = 0

    def forward(self, x):
        T = x.shape[1]
        weights = torch.ones(T, T, device=x.device).tril()
        y = self.proj((weights / weights.sum(-1, keepdim=True)) @ x)
        if self.training:
            self.calls += 1
            if self.calls >= {NAN_AT_STEP}:
                y = y * float("nan")
        return y


ATTENTION = NanAtStep
'''


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    p = SHORT
    return load_token_data(p.data_source, p.vocab_size, p.val_tokens, tmp_path_factory.mktemp("cache"),
                           p.tokenizer_train_bytes, synthetic_stories_n=p.synthetic_stories)


@pytest.fixture
def nan_program(tmp_path):
    path = tmp_path / "nan_program.py"
    path.write_text(NAN_PROGRAM)
    return path


def test_same_seed_same_curves_and_a_different_seed_differs(data):
    threads = torch.get_num_threads()
    a = train(SEED_CLS, SHORT, SHORT.ladder[0], data)
    b = train(SEED_CLS, SHORT, SHORT.ladder[0], data)
    assert a.status == b.status == "ok"
    assert a.train_curve == b.train_curve and a.val_curve == b.val_curve and a.final_monitor_loss == b.final_monitor_loss
    assert [s for s, _ in a.val_curve] == [20, 40]
    assert train_curve_interval(SHORT) == 1  # about 100 points per run: every step of a 40-step run
    assert [s for s, _ in a.train_curve] == list(range(1, 41))
    longer = dataclasses.replace(SHORT, steps=1000, eval_interval_steps=100)
    assert train_curve_interval(longer) == 10 and train_curve_interval(get_profile("full")) == 1000
    assert a.grad_norm_mean > 0 and a.grad_norm_var >= 0 and a.loss_roughness > 0 and a.peak_memory_mib > 0
    c = train(SEED_CLS, SHORT, SHORT.ladder[0], data, seed=1)
    assert c.val_curve != a.val_curve and c.train_curve != a.train_curve
    assert torch.get_num_threads() == threads  # the engine restores the caller's thread count


def test_lr_schedule_warms_up_linearly_then_decays_by_cosine_to_a_tenth():
    p = dataclasses.replace(SHORT, steps=1000, warmup_steps=100, lr=1e-3)
    lrs = [lr_at(s, p) for s in range(p.steps)]
    assert lrs[0] == pytest.approx(1e-5) and lrs[49] == pytest.approx(5e-4) and lrs[99] == pytest.approx(1e-3)
    assert all(b > a for a, b in zip(lrs[:99], lrs[1:100]))
    assert lrs[100] == pytest.approx(1e-3)
    assert lrs[550] == pytest.approx(1e-4 + 0.5 * 9e-4)  # half way through the decay
    assert all(b <= a for a, b in zip(lrs[100:], lrs[101:]))
    assert lrs[-1] == pytest.approx(1e-4, rel=1e-4) and lr_at(p.steps, p) == pytest.approx(1e-4)
    assert min(lrs[100:]) >= 1e-4 - 1e-12


def test_nonfinite_loss_stops_at_the_exact_first_bad_step(data, nan_program):
    cls = load_attention(nan_program.read_text(), str(nan_program))
    result = train(cls, SHORT, SHORT.ladder[0], data)
    assert result.status == "nonfinite"
    assert result.nonfinite_step == NAN_AT_STEP and result.steps_done == NAN_AT_STEP
    assert result.final_monitor_loss is None
    assert [s for s, _ in result.train_curve] == list(range(1, NAN_AT_STEP))
    assert all(math.isfinite(v) for _, v in result.train_curve)


def test_sparse_checks_still_report_the_exact_first_bad_step(data, nan_program, monkeypatch):
    """The CUDA cadence (a check every N steps, read back later) on the CPU: the step is still exact; the run
    stops at the check point whose window held it, as a loop that synchronised at each check would."""
    monkeypatch.setattr(train_mod, "CPU_CHECK_EVERY_STEPS", 7)
    cls = load_attention(nan_program.read_text(), str(nan_program))
    result = train(cls, SHORT, SHORT.ladder[0], data)
    assert result.status == "nonfinite" and result.nonfinite_step == NAN_AT_STEP and result.steps_done == 14


def test_loss_monitor_windows_and_divergence():
    losses = torch.tensor([5.0, 4.0, 3.0, float("inf"), 2.0, float("nan"), 1.0, 1.0])
    monitor = LossMonitor(losses, warmup_steps=2, divergence_limit=10.0)
    monitor.submit(3)
    assert monitor.poll() is None
    monitor.submit(6)
    assert monitor.poll() == ("nonfinite", 6, 4)
    diverging = LossMonitor(torch.tensor([20.0, 20.0, 20.0, 11.0, 9.0]), warmup_steps=2, divergence_limit=10.0)
    diverging.submit(2)
    assert diverging.poll() is None  # above the limit, but still warming up
    diverging.submit(4)
    assert diverging.poll() == ("diverged", 4, None)


def test_compile_failure_falls_back_to_eager_and_is_recorded(data, monkeypatch):
    eager = train(SEED_CLS, SHORT, SHORT.ladder[0], data)

    def broken_compile(model, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("simulated: this program does not compile")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    result = train(SEED_CLS, dataclasses.replace(SHORT, compile=True), SHORT.ladder[0], data)
    assert result.status == "ok" and result.compiled is False
    assert "simulated: this program does not compile" in result.compile_error
    assert result.compile_mode == "default"
    # The failed step is redone eagerly on the same batch with the same random state: an eager run's numbers.
    assert result.train_curve == eager.train_curve and result.val_curve == eager.val_curve

    def compile_raises(model, **kwargs):
        raise RuntimeError("simulated: torch.compile itself failed")

    monkeypatch.setattr(torch, "compile", compile_raises)
    result = train(SEED_CLS, dataclasses.replace(SHORT, compile=True), SHORT.ladder[0], data)
    assert result.status == "ok" and result.compiled is False and "itself failed" in result.compile_error


def test_the_compiled_step_returns_the_loss_alone_so_no_zero_gradient_of_the_logits_is_made(data, monkeypatch):
    """A compiled function that also returned the logits made AOTAutograd give that unused output a gradient of zeros,
    the size of the whole logits, every step (on the H200: a bf16 fill and an add over 8192 x 16384 per step).
    AOTAutograd without inductor (``aot_eager``) keeps the graphs as aten ops, so the profiler can see such a fill."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: real_compile(fn, backend="aot_eager", dynamic=False))
    p = dataclasses.replace(SHORT, steps=2, compile=True, eval_interval_steps=2)
    logits_shape = [p.batch_size_seqs, p.context_len_tokens, p.vocab_size]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        result = train(SEED_CLS, p, p.ladder[0], data)
    assert result.status == "ok" and result.compiled is True
    zeroed = [e.input_shapes for e in prof.events() if e.name in ("aten::zero_", "aten::fill_", "aten::zeros_like")]
    assert zeroed, "the profiler saw no fill at all: the test no longer observes the backward"
    assert not [shape for shape in zeroed if shape and shape[0] == logits_shape]


def test_engine_and_plain_eager_loop_reach_the_same_loss(data):
    """On the CPU the engine and the reference loop differ only in how batches are drawn (and, on CUDA, bf16,
    compile and fused AdamW): after the same number of steps they sit at the same loss, within noise."""
    p = dataclasses.replace(SHORT, steps=100, warmup_steps=10, eval_interval_steps=100)
    fast = train(SEED_CLS, p, p.ladder[0], data)
    ref = reference_loop(SEED_CLS, p, p.ladder[0], data, p.steps, "cpu")
    fast_tail = [v for s, v in fast.train_curve if s > 50]
    ref_tail = sum(ref["losses"][-20:]) / 20
    start = math.log(p.vocab_size)
    assert fast.train_curve[-1][1] < 0.85 * start and ref_tail < 0.85 * start  # both learned
    assert abs(sum(fast_tail) / len(fast_tail) - ref_tail) < 0.06 * ref_tail


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: bf16 autocast, torch.compile and fused AdamW "
                    "are the engine's fast path only on a GPU (compiling on this CPU takes minutes)")
def test_fast_path_matches_the_eager_fp32_loop_on_cuda():
    from harness.diagnostics.bench import RandomTokens

    p = dataclasses.replace(get_profile("pilot"), steps=300, warmup_steps=30, eval_interval_steps=300,
                            ladder=((96, 4, 4),), reference_rung=0)
    data = RandomTokens.make(p.vocab_size, p.val_tokens)
    fast = train(SEED_CLS, p, p.ladder[0], data)
    ref = reference_loop(SEED_CLS, p, p.ladder[0], data, p.steps, "cuda")
    assert fast.status == "ok" and fast.compiled, fast.compile_error
    # Random tokens: both must settle at the unigram entropy, ln V, at the same rate.
    tail = [v for s, v in fast.train_curve if s > 200]
    assert abs(sum(tail) / len(tail) - sum(ref["losses"][-50:]) / 50) < 0.02 * math.log(p.vocab_size)


def _ladder_profile():
    return dataclasses.replace(SHORT, objective="scaling_slope", steps=30, eval_interval_steps=15)


def test_concurrent_rungs_give_the_sequential_results(data, tmp_path, monkeypatch):
    p = _ladder_profile()
    sequential, seq_model = run_objective(SEED_CLS, p, data, concurrent=False, weights_dir=tmp_path / "seq")
    markers, path = exit_handler_site(tmp_path)
    monkeypatch.setenv("PYTHONPATH", path)  # the rung processes inherit it
    concurrent, conc_model = run_objective(SEED_CLS, p, data, concurrent=True, weights_dir=tmp_path / "conc",
                                           source=SEED_FW.seed_source())
    # Each rung trained in a process of its own (multiprocessing's resource tracker is one more process).
    assert len(list(markers.glob("start-*"))) >= len(p.ladder)
    assert not list(markers.glob("exit-*")), "a rung's process ends, its result written, without torch's teardown"
    keys = ("rung", "status", "final_monitor_loss", "val_curve", "train_curve", "steps_done", "params",
            "non_embedding_params", "compiled")
    assert [{k: r[k] for k in keys} for r in concurrent["runs"]] == [{k: r[k] for k in keys} for r in sequential["runs"]]
    # Every rung leaves the same trained tensors for the scorer either way.
    for i in range(len(p.ladder)):
        seq_pack, conc_pack = (torch.load(tmp_path / side / f"rung{i}.pt", weights_only=True) for side in ("seq", "conc"))
        assert seq_pack["params"].keys() == conc_pack["params"].keys() and "tok_emb.weight" in seq_pack["params"]
        assert all(torch.equal(seq_pack["params"][k], conc_pack["params"][k]) for k in seq_pack["params"])
    # The last rung's trained model comes back intact for the post-training leak test.
    for (name, a), (_, b) in zip(seq_model.state_dict().items(), conc_model.state_dict().items()):
        assert torch.equal(a, b), name
    assert conc_model.training and next(conc_model.parameters()).device.type == "cpu"


def test_concurrent_failure_is_reported_as_the_sequential_loop_reports_it(data, nan_program):
    p = _ladder_profile()
    source = nan_program.read_text()
    cls = load_attention(source, "evolved_program.py")
    failures = []
    for concurrent in (False, True):
        with pytest.raises(TrainingFailure) as info:
            run_objective(cls, p, data, concurrent=concurrent, source=source)
        failures.append(info.value)
    seq, conc = failures
    assert seq.status == conc.status == "nonfinite" and seq.message == conc.message
    assert "at step 13" in conc.message and len(conc.runs) == len(seq.runs) == 1
    assert conc.runs[0]["nonfinite_step"] == seq.runs[0]["nonfinite_step"] == NAN_AT_STEP


def test_a_crash_in_a_rung_process_is_raised_as_itself(data):
    """What train() raises in a rung's process is raised in the parent as itself, so the sandbox reports
    "training raised ValueError: ..." as it does for a sequential run."""
    source = NAN_PROGRAM.replace('y = y * float("nan")', 'raise ValueError("boom at a known step")')
    p = _ladder_profile()
    with pytest.raises(ValueError, match="boom at a known step"):
        run_objective(load_attention(source, "evolved_program.py"), p, data, concurrent=False)
    [outcome] = train_rungs_concurrently(source, "evolved_program.py", p, [p.ladder[0]], data)
    assert isinstance(outcome.error, ValueError) and "boom at a known step" in str(outcome.error)
    assert "in the process training rung" in str(outcome.error.__cause__) and outcome.record is None



def test_without_source_the_rungs_train_one_after_another(data, nan_program):
    placeholder = load_attention(SEED_FW.seed_source(), "evolved_program.py")
    record, _ = run_objective(placeholder, _ladder_profile(), data, concurrent=True)
    assert len(record["runs"]) == 2
