"""``harness bench``: runs on the CPU at smoke size and writes a valid JSON record with the fingerprint."""

import json

import pytest

from harness import cli
from harness.diagnostics import bench
from harness.trusted.frameworks import FRAMEWORKS
from harness.trusted.profiles import get_profile
from harness.sandbox.loader import load_attention


def test_bench_on_smoke_writes_json_with_the_fingerprint(tmp_path, capsys):
    out = tmp_path / "bench"
    assert cli.main(["bench", "--profile", "smoke", "--steps", "12", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    files = list(out.glob("bench-smoke-cpu-*.json"))
    assert len(files) == 1
    record = json.loads(files[0].read_text())
    fp = record["fingerprint"]
    assert fp["hardware"]["device"] == "cpu" and fp["hardware"]["cpu"]
    assert fp["versions"]["torch"] and fp["versions"]["python"]
    assert fp["profile"] == "smoke" and fp["profile_digest"] == get_profile("smoke").digest()
    assert len(fp["harness_code_hash"]) == 16
    smoke = get_profile("smoke")
    assert [r["rung"] for r in record["rungs"]] == [list(r) for r in smoke.ladder]
    for row in record["rungs"]:
        for loop in ("fast", "reference"):
            assert row[loop]["ms_per_step"] > 0 and row[loop]["tokens_per_s"] > 0
            assert row[loop]["util_bf16_peak"] is None  # no GPU peak on a CPU
        assert row["speedup_vs_reference"] > 0 and row["flops_per_step"] > 0
        assert row["fast"]["compiled"] is False and row["fast"]["projected_rung_s"] > 0
    assert record["device"]["peak"] is None and record["config"]["evaluations_per_rung"] == 3
    assert record["projection"]["sequential_s"] == pytest.approx(
        sum(r["fast"]["projected_rung_s"] for r in record["rungs"]))
    assert "eager fp32 (reference)" in printed and "projected evaluation" in printed and "n/a" in printed
    assert record["table"] in printed


def test_peak_table_matches_device_names():
    assert bench.device_peak("NVIDIA H100 80GB HBM3")["bf16_dense_tflops"] == pytest.approx(989.4)
    assert bench.device_peak("NVIDIA H100 PCIe")["label"] == "NVIDIA H100 PCIe"
    assert bench.device_peak("NVIDIA H100 NVL")["label"] == "NVIDIA H100 NVL"
    assert bench.device_peak("NVIDIA H200")["bf16_dense_tflops"] == pytest.approx(989.4)
    assert bench.device_peak("NVIDIA A100-SXM4-80GB")["bf16_dense_tflops"] == pytest.approx(312.0)
    assert bench.device_peak("Tesla T4") is None and bench.device_peak(None) is None


def test_audited_model_flops_agree_with_the_analytic_count_for_softmax():
    """The seed is softmax attention written as explicit masked matmuls, so the audit of the whole model's matmuls
    is the textbook 6·N·tokens + 12·L·d·T·tokens, up to the attention's unmasked T×T products being counted
    exactly (they are in both)."""
    profile = get_profile("full")
    cls = load_attention(FRAMEWORKS["cd"].seed_source(), "cd.py")
    rung = profile.ladder[1]
    audited = bench.audited_flops_per_step(cls, rung, profile, profile.vocab_size)["matmul"]
    assert audited == pytest.approx(bench.analytic_flops_per_step(rung, profile, profile.vocab_size), rel=0.02)


def test_projection_counts_every_validation_pass_and_the_first_step():
    profile = get_profile("full")
    assert bench.n_evaluations(profile) == 10
    seconds = bench.projected_rung_s(profile, ms_per_step=2.0, eval_s=1.5, first_step_s=40.0, ms_first=2.0)
    assert seconds == pytest.approx(100_000 * 0.002 + 10 * 1.5 + 40.0 - 0.002)
