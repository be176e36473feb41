"""The statistics of ``harness validate`` against values computed by hand."""

import math

import pytest

from harness.validation import stats

A = [1.0, 2.0, 3.0, 4.0]  # mean 2.5, variance 5/3
B = [3.0, 4.0, 5.0, 6.0, 7.0]  # mean 5, variance 5/2


def test_welch_by_hand():
    w = stats.welch(A, B)
    # se^2 = (5/3)/4 + (5/2)/5 = 5/12 + 1/2 = 11/12
    se = math.sqrt(11 / 12)
    assert w.mean_a == 2.5 and w.mean_b == 5.0
    assert w.diff == -2.5
    assert w.se == pytest.approx(se, rel=1e-12)
    assert w.t == pytest.approx(-2.5 / se, rel=1e-9)  # -2.6111648
    # df = (11/12)^2 / ((5/12)^2/3 + (1/2)^2/4) = (121/144) / (52/432) = 363/52
    assert w.df == pytest.approx(363 / 52, rel=1e-12)
    # two-sided p from the t distribution with that df
    assert w.p == pytest.approx(0.034938782, abs=1e-8)
    # 95% CI: diff +- t_{0.975, 363/52} * se, t_{0.975, 6.98} = 2.366...
    half = 2.2652202817542935
    assert w.ci_low == pytest.approx(-2.5 - half, abs=1e-9)
    assert w.ci_high == pytest.approx(-2.5 + half, abs=1e-9)
    assert half / se == pytest.approx(2.3659, abs=1e-4)


def test_cohens_d_by_hand():
    # pooled variance = (3 * 5/3 + 4 * 5/2) / 7 = 15/7
    d = stats.cohens_d(A, B)
    assert d == pytest.approx(-2.5 / math.sqrt(15 / 7), rel=1e-12)  # -1.7078
    assert stats.interpret_d(d) == "large"
    assert [stats.interpret_d(x) for x in (0.0, 0.19, -0.2, 0.49, 0.5, -0.79, 0.8)] == \
        ["negligible", "negligible", "small", "small", "medium", "medium", "large"]
    assert stats.interpret_d(math.nan) == "undefined"


def test_holm_by_hand():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone: 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # capped at 1 and monotone: 0.3*2 = 0.6, then max(0.6, 0.5) = 0.6
    assert stats.holm([0.5, 0.3]) == pytest.approx([0.6, 0.6])
    assert stats.holm([0.7, 0.9, 0.6]) == pytest.approx([1.0, 1.0, 1.0])
    assert stats.holm([0.02]) == pytest.approx([0.02])
    # NaN (untestable) is left out of the family: m = 2 here
    out = stats.holm([0.01, math.nan, 0.04])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    # Holm controls the family-wise error, not the false discovery rate: Benjamini-Hochberg is laxer.
    from scipy.stats import false_discovery_control

    bh = false_discovery_control([0.01, 0.04, 0.03, 0.005])
    assert bh == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert all(h >= b for h, b in zip(stats.holm([0.01, 0.04, 0.03, 0.005]), bh))


def test_mean_ci_and_ols_by_hand():
    m, lo, hi = stats.mean_ci([1.0, 2.0, 3.0])  # sd 1, se 1/sqrt(3), t_{0.975,2} = 4.302653
    assert m == 2.0
    assert hi - m == pytest.approx(4.302652729911275 / math.sqrt(3), rel=1e-9)
    assert m - lo == pytest.approx(hi - m)
    fit = stats.ols([0, 1, 2, 3], [1, 3, 2, 5])
    # Sxx = 5, Sxy = 5.5; residuals -0.1, 0.8, -1.3, 0.6; SSR = 2.7, s^2 = 1.35
    assert fit.slope == pytest.approx(1.1)
    assert fit.intercept == pytest.approx(1.1)
    assert fit.se_slope == pytest.approx(math.sqrt(0.27))
    assert fit.se_intercept == pytest.approx(math.sqrt(1.35 * (0.25 + 2.25 / 5)))
    assert fit.df == 2
    assert fit.slope_ci[1] - fit.slope == pytest.approx(4.302652729911275 * math.sqrt(0.27), rel=1e-9)


def test_scaling_fits_per_seed_and_pooled():
    n = [1000.0, math.e * 1000.0]  # ln N differs by exactly 1: b = loss2 - loss1
    fits = stats.scaling_fits([(n, [3.0, 2.9]), (n, [3.1, 2.9]), (n, [3.0, 2.7])])
    assert [s["b"] for s in fits["per_seed"]] == pytest.approx([-0.1, -0.2, -0.3])
    assert fits["mean_slope"] == pytest.approx(-0.2)
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # sd of slopes 0.1
    assert fits["slope_ci"] == pytest.approx([-0.2 - half, -0.2 + half])
    assert fits["pooled"]["slope"] == pytest.approx(-0.2)
    assert fits["pooled"]["df"] == 4


def test_wins_and_scaled_threshold():
    assert stats.wins([1, 2, 3], [2, 2, 4]) == 2  # ties are not wins
    assert stats.required_wins(10) == 7
    assert stats.required_wins(3) == 3  # ceil(2.1)
    assert stats.required_wins(5) == 4  # ceil(3.5)
    assert stats.required_wins(20) == 14
    assert stats.improvement_frac(2.97, 3.0) == pytest.approx(0.01)
    assert stats.improvement_frac(-0.33, -0.30) == pytest.approx(0.1)  # a steeper slope is an improvement


def test_not_significant_difference_says_so():
    cand, base = [2.80, 2.78, 2.83], [2.81, 2.79, 2.82]
    w = stats.welch(cand, base)
    assert w.p > 0.5
    p_holm = stats.holm([w.p, 0.001])[0]
    v = stats.verdict(p_holm, w.diff, stats.improvement_frac(w.mean_a, w.mean_b), stats.wins(cand, base), 3,
                      stats.cohens_d(cand, base), True)
    assert v.level == "not significant"
    assert v.text.startswith("Not significant")
    assert not v.criteria[0]["passed"]


def test_verdict_levels():
    # minimum: significant, > 1 % better, 8/10 wins; small d -> not strong
    v = stats.verdict(0.01, -0.05, 0.02, 8, 10, -0.4, True)
    assert v.level == "minimum" and "MINIMUM" in v.text
    assert stats.verdict(0.01, -0.05, 0.02, 8, 10, -0.9, True).level == "strong"
    assert stats.verdict(0.01, -0.05, 0.02, 8, 10, -0.9, False).level == "minimum"
    # significant but only 6 of 10 seeds, or 0.5 % better
    assert stats.verdict(0.01, -0.05, 0.02, 6, 10, -0.9, True).level == "significant but below the minimum"
    assert stats.verdict(0.01, -0.05, 0.005, 9, 10, -0.9, True).level == "significant but below the minimum"
    # 3 seeds: 2 wins are not enough (ceil(0.7 x 3) = 3), and the text says the threshold was scaled
    v = stats.verdict(0.01, -0.05, 0.02, 2, 3, -2.0, True)
    assert v.level == "significant but below the minimum"
    assert "scaled to N = 3" in v.criteria[2]["name"]
    assert stats.verdict(0.01, +0.05, -0.02, 0, 10, 2.0, False).level == "worse"
    assert stats.verdict(math.nan, 0.0, 0.0, 0, 10, math.nan, None).level == "untestable"


def test_degenerate_samples():
    w = stats.welch([1.0, 1.0], [1.0, 1.0])
    assert math.isnan(w.p)
    w = stats.welch([1.0], [2.0, 3.0])
    assert math.isnan(w.p) and math.isnan(w.df)
    assert math.isnan(stats.cohens_d([1.0], [1.0, 2.0]))


def test_paired_t_by_hand():
    # differences 2, 3, 1: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 2 sqrt 3 with 2 df
    res = stats.paired([3.0, 5.0, 4.0], [1.0, 2.0, 3.0])
    assert res["t"] == pytest.approx(2 * math.sqrt(3))
    # with 2 df the two-sided p has a closed form: 1 - t / sqrt(t^2 + 2) = 1 - sqrt(12/14)
    assert res["p"] == pytest.approx(1 - math.sqrt(6 / 7), rel=1e-9)
    assert math.isnan(stats.paired([1.0, 2.0], [0.0, 1.0])["p"])  # constant difference: undefined
