"""The statistics of ``harness validate`` against values computed by hand."""

import itertools
import math

import numpy as np
import scipy.stats
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


def test_d_labels():
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
    # Sxx = 5, Sxy = 5.5; residuals -0.1, 0.8, -1.3, 0.6; SSR = 2.7, s^2 = 1.35; SST = 8.75
    assert fit.slope == pytest.approx(1.1)
    assert fit.intercept == pytest.approx(1.1)
    assert fit.se_slope == pytest.approx(math.sqrt(0.27))
    assert fit.se_intercept == pytest.approx(math.sqrt(1.35 * (0.25 + 2.25 / 5)))
    assert fit.df == 2
    assert fit.slope_ci[1] - fit.slope == pytest.approx(4.302652729911275 * math.sqrt(0.27), rel=1e-9)
    assert fit.r2 == pytest.approx(1 - 2.7 / 8.75)
    assert stats.ols([1, 2], [3, 3]).r2 != stats.ols([1, 2], [3, 3]).r2  # constant y: R² undefined (NaN)
    assert stats.ols([1, 2], [3, 4]).r2 == 1.0  # two points: a perfect fit by construction


def test_scaling_fits_per_seed_and_pooled():
    n = [1000.0, math.e * 1000.0]  # ln N differs by exactly 1: b = loss2 - loss1
    fits = stats.scaling_fits([(n, [3.0, 2.9]), (n, [3.1, 2.9]), (n, [3.0, 2.7])])
    assert [s["b"] for s in fits["per_seed"]] == pytest.approx([-0.1, -0.2, -0.3])
    assert [s["r2"] for s in fits["per_seed"]] == [1.0, 1.0, 1.0] and fits["per_seed"][0]["sizes"] == 2
    assert fits["mean_slope"] == pytest.approx(-0.2)
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # sd of slopes 0.1
    assert fits["slope_ci"] == pytest.approx([-0.2 - half, -0.2 + half])
    assert fits["pooled"]["slope"] == pytest.approx(-0.2)
    assert fits["pooled"]["df"] == 4
    # pooled over two sizes, the fit passes through the two group means (3.0333 and 2.8333), so SSR is the sum
    # of squared deviations from them: 0.02/3 + 0.08/3
    ys = [3.0, 3.1, 3.0, 2.9, 2.9, 2.7]
    sst = sum((y - sum(ys) / 6) ** 2 for y in ys)
    ssr = 0.02 / 3 + 0.08 / 3
    assert fits["pooled"]["r2"] == pytest.approx(1 - ssr / sst)


def test_wins_and_improvement():
    assert stats.wins([1, 2, 3], [2, 2, 4]) == 2  # ties are not wins
    assert stats.improvement_frac(2.97, 3.0) == pytest.approx(0.01)
    assert stats.improvement_frac(-0.33, -0.30) == pytest.approx(0.1)  # a steeper slope is an improvement


def test_paired_t_d_and_ci_by_hand():
    # differences 2, 3, 1: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 2 sqrt 3 with 2 df
    res = stats.paired([3.0, 5.0, 4.0], [1.0, 2.0, 3.0])
    assert res.t == pytest.approx(2 * math.sqrt(3)) and res.df == 2 and res.n == 3
    # with 2 df the two-sided p has a closed form: 1 - t / sqrt(t^2 + 2) = 1 - sqrt(12/14)
    assert res.p == pytest.approx(1 - math.sqrt(6 / 7), rel=1e-9)
    assert res.diff == 2.0 and res.sd_diff == 1.0
    assert res.d == 2.0 and res.d_label == "large"  # paired d: mean difference / sd of the differences
    half = 4.302652729911275 / math.sqrt(3)
    assert (res.ci_low, res.ci_high) == pytest.approx((2 - half, 2 + half))
    from scipy.stats import ttest_rel

    assert res.p == pytest.approx(ttest_rel([3.0, 5.0, 4.0], [1.0, 2.0, 3.0]).pvalue)
    assert math.isnan(stats.paired([1.0, 2.0], [0.0, 1.0]).p)  # constant difference: no test
    assert math.isnan(stats.paired([1.0], [0.0]).p)
    with pytest.raises(ValueError):
        stats.paired([1.0, 2.0], [1.0])


def test_paired_and_pooled_d_differ_on_correlated_seeds():
    """The design's d is the paired one; the pooled-sd d of two independent samples understates a consistent
    per-seed improvement (the example that misled the earlier reports: pooled -0.47 'small', paired large)."""
    base = [3.00, 3.10, 2.90, 3.05, 2.95]
    cand = [b - 0.02 + e for b, e in zip(base, [0.01, -0.01, 0.0, 0.015, -0.015])]
    p = stats.paired(cand, base)
    pooled = (sum(cand) / 5 - sum(base) / 5) / math.sqrt((_var(cand) + _var(base)) / 2)
    assert abs(p.d) > 1.0 and abs(pooled) < 0.5
    assert p.p < 0.05 and stats.welch(cand, base).p > 0.5  # pairing is what gives the power


def _var(x):
    m = sum(x) / len(x)
    return sum((v - m) ** 2 for v in x) / (len(x) - 1)


def test_anova_and_kruskal_by_hand():
    groups = {"cd": [1.0, 2.0, 3.0], "ttr": [2.0, 3.0, 4.0], "mm": [5.0, 6.0, 7.0]}
    out = stats.across_groups(groups)
    # SSB = 3 ((2-11/3)^2 + (3-11/3)^2 + (6-11/3)^2) = 26, SSW = 6: F = (26/2) / (6/6) = 13 on (2, 6) df;
    # for F(2, d2) the survival function is (1 + 2F/d2)^(-d2/2) = (6/32)^3
    assert out["anova"]["F"] == pytest.approx(13.0)
    assert (out["anova"]["df_between"], out["anova"]["df_within"]) == (2, 6)
    assert out["anova"]["p"] == pytest.approx((6 / 32) ** 3)
    # ranks: 1 | 2.5 2.5 | 4.5 4.5 | 6 7 8 9 -> R = 8, 13, 24; H = 12/(9*10) sum R^2/3 - 30, corrected for
    # the two ties of two: 1 - 2 * (8 - 2) / (729 - 9)
    h = (12 / 90 * (64 + 169 + 576) / 3 - 30) / (1 - 12 / 720)
    assert out["kruskal"]["H"] == pytest.approx(h)
    # Groups of 3 are too small for the chi-square approximation (p = exp(-H/2) with 2 df, 0.048 here): the p is
    # the share of the 1,680 ways to deal the nine values into three groups of three whose H is at least as large.
    pooled = [v for g in groups.values() for v in g]
    dealt = []
    for first in itertools.combinations(range(9), 3):
        rest = [i for i in range(9) if i not in first]
        for second in itertools.combinations(rest, 3):
            third = [i for i in rest if i not in second]
            dealt.append(scipy.stats.kruskal(*[[pooled[i] for i in g] for g in (first, second, third)]).statistic)
    assert len(dealt) == 1680
    exact = sum(x >= h - 1e-9 for x in dealt) / len(dealt)
    assert out["kruskal"]["p"] == pytest.approx(exact) and out["kruskal"]["p_method"] == "exact permutation"
    assert exact == pytest.approx(0.025) and math.exp(-h / 2) == pytest.approx(0.0484, abs=1e-4)
    # From five values per group up, the chi-square approximation: exp(-H/2) with 2 df.
    big = stats.across_groups({k: v + [x + 0.5 for x in v[:2]] for k, v in groups.items()})["kruskal"]
    assert big["p"] == pytest.approx(math.exp(-big["H"] / 2)) and big["p_method"] == "chi-square approximation"
    # pairs by Welch, Holm over the three
    pairs = {(p["a"], p["b"]): p for p in out["pairs"]}
    assert set(pairs) == {("cd", "ttr"), ("cd", "mm"), ("ttr", "mm")}
    raw = [pairs[k]["p"] for k in sorted(pairs)]
    assert [pairs[k]["p_holm"] for k in sorted(pairs)] == pytest.approx(stats.holm(raw))
    assert pairs[("cd", "ttr")]["p"] == pytest.approx(stats.welch([1.0, 2.0, 3.0], [2.0, 3.0, 4.0]).p)
    assert math.isnan(stats.across_groups({"cd": [1.0, 2.0]})["anova"]["p"])  # one group: nothing to compare


def test_kruskal_on_two_small_groups_is_exact_where_the_approximation_calls_it_significant():
    out = stats.across_groups({"cd": [1.0, 2.0, 3.0], "ttr": [4.0, 5.0, 6.0]})["kruskal"]
    assert scipy.stats.kruskal([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]).pvalue < 0.05
    # Two groups: the exact Mann-Whitney test, an independent computation of the same permutation distribution.
    assert out["p"] == pytest.approx(scipy.stats.mannwhitneyu([1, 2, 3], [4, 5, 6], method="exact").pvalue) == 0.1


def _primary(diff=-0.05, p=0.001, n=10, d=-0.9):
    return stats.Paired(n, 3.0 + diff, 3.0, 0.01, 0.01, diff, abs(diff / d), 0.01, -5.0, n - 1, p, diff - 0.01,
                        diff + 0.01, d, stats.interpret_d(d))


SLOPE_OK = {"diff": -0.01, "p": 0.001, "p_holm": 0.002}


def _verdict(primary=None, p_holm=0.002, wins=9, slope=SLOPE_OK, flops=1.02, interpretation="gated decay",
             deviations=()):
    return stats.verdict(primary=primary or _primary(), p_holm=p_holm, n_wins=wins, slope=slope, flop_ratio=flops,
                         interpretation=interpretation, deviations=list(deviations))


def test_verdict_levels_follow_the_design():
    assert _verdict().level == "strong"
    assert _verdict(interpretation=None).level == "minimum, strong pending interpretation"
    v = _verdict(flops=None)  # the interpretation is in; what is pending is the evaluator's FLOP ratio
    assert v.level == "minimum, strong pending" and "FLOP ratio" in v.text and "interpretation" not in v.text
    v = _verdict(flops=None, interpretation=None)
    assert v.level == "minimum, strong pending" and "FLOP ratio" in v.text and "interpretation" in v.text
    v = _verdict(primary=_primary(d=-0.4))
    assert v.level == "minimum" and "|paired d| > 0.5" in v.text
    assert _verdict(flops=1.2).level == "minimum"
    # the slope is a minimum criterion, counted by its test, not its point estimate
    assert _verdict(slope={"diff": -0.01, "p": 0.2, "p_holm": 0.2}).level == "below the minimum"
    assert _verdict(slope={"diff": +0.01, "p": 0.001, "p_holm": 0.001}).level == "below the minimum"
    v = _verdict(slope=None)
    assert v.level == "below the minimum" and "not measured" in v.criteria[3]["note"]
    assert _verdict(wins=6).level == "below the minimum"
    assert _verdict(primary=_primary(diff=-0.02)).level == "below the minimum"  # 0.67 % better: not > 1 %
    assert _verdict(p_holm=0.08).level == "not significant"
    assert _verdict(primary=_primary(diff=+0.05, d=0.9)).level == "worse"
    assert _verdict(primary=_primary(p=math.nan), p_holm=math.nan).level == "untestable"


def test_a_deviation_from_the_design_is_exploratory_whatever_the_numbers():
    v = _verdict(deviations=["seeds 42..44 instead of 42..51"])
    assert v.level == "exploratory"
    assert v.text.startswith("Exploratory: protocol not followed (seeds 42..44 instead of 42..51)")
    assert "significant" not in v.text.lower() and "strong" not in v.text.lower()
    assert v.criteria[0]["passed"] is True  # the criteria are still shown, with their values


def test_not_significant_difference_says_so():
    cand, base = [2.80, 2.78, 2.83], [2.81, 2.79, 2.82]
    prim = stats.paired(cand, base)
    assert prim.p > 0.5
    v = _verdict(primary=prim, p_holm=stats.holm([prim.p, 0.001])[0], wins=stats.wins(cand, base))
    assert v.level == "not significant" and v.text.startswith("Not significant")
    assert not v.criteria[0]["passed"]


def test_differences_equal_but_for_rounding_are_untestable_like_equal_ones():
    base = [3.7215400323407826, 3.2287622212704528, 3.9452706955539223, 3.901427457611484, 3.0305899830335536]
    cand = [b + 0.1 for b in base]  # every difference is 0.1 up to one unit of rounding
    assert np.std(np.subtract(cand, base), ddof=1) > 0
    exact = stats.paired([3.25] * 5, [3.0] * 5)
    rounded = stats.paired(cand, base)
    assert math.isnan(exact.p) and math.isnan(rounded.p)
    assert rounded.diff == pytest.approx(0.1) and math.isinf(rounded.d) and rounded.d_label == "undefined"
    assert _verdict(primary=rounded, p_holm=math.nan).level == "untestable"
    real = stats.paired([b + 0.1 + 1e-6 * i for i, b in enumerate(base)], base)  # a spread of 1e-6 is data
    assert real.p < 1e-10


def test_degenerate_samples():
    w = stats.welch([1.0, 1.0], [1.0, 1.0])
    assert math.isnan(w.p)
    w = stats.welch([1.0], [2.0, 3.0])
    assert math.isnan(w.p) and math.isnan(w.df)


def test_every_report_prints_a_p_value_the_same_way():
    assert [stats.format_p(p) for p in (0.0123456, 1.23e-5, 0.5, None, float("nan"), np.float32("nan"))] == \
        ["0.0123", "1.2e-05", "0.5", "–", "–", "–"]
    assert stats.describe([1.0, None, 3.0, float("inf")]) == {"n": 2, "mean": 2.0, "sd": pytest.approx(2 ** 0.5)}


def test_a_number_at_a_threshold_is_printed_on_its_side_of_it():
    assert stats.format_against(0.049996, 0.05) == "0.049996" and stats.format_against(0.0123456, 0.05) == "0.0123"
    assert stats.format_against(0.05, 0.05) == "0.05" and stats.format_against(0.050004, 0.05) == "0.050004"
    assert stats.format_against(-0.5004, -0.5) == "-0.5004" and stats.format_against(0.996, 1.0) == "0.996"
    assert stats.format_p(0.049996) == "0.049996" and stats.format_p(0.0500001) == "0.0500001"
    # The verdict's own words: p below alpha, |d| above 0.5, the improvement above 1 %, each visibly so.
    v = _verdict(primary=_primary(diff=-0.0301, d=-0.5004), p_holm=0.049996)
    assert v.level == "strong"
    assert "Holm-adjusted p = 0.049996," in v.text and "|d| = 0.5004," in v.text and "FLOP ratio 1.020," in v.text
    assert "1.003 % lower" in v.text  # "1.00 % lower" would sit on the threshold
    v = _verdict(primary=_primary(diff=-0.029988, d=-0.9))  # 0.9996 % lower: not more than 1 %
    assert v.level == "below the minimum" and v.criteria[1]["value"] == pytest.approx(0.029988 / 3)
    from harness.validation.report import _criterion_value

    assert _criterion_value(v.criteria[1]) == "0.9996 %" and _criterion_value(v.criteria[0]) == "0.002"
    assert _criterion_value(v.criteria[4]) == "-0.900" and stats.format_against(1.1, 1.1, 3, "f") == "1.100"
    from harness.validation.report import paired_d

    assert paired_d(-0.5004) == "-0.5004" and paired_d(0.9) == "0.90" and paired_d(math.nan) == "–"


def test_the_best_candidate_of_a_framework_is_one_that_trained():
    from harness.validation.comparison import across_frameworks

    def comparison(framework, label, losses):
        mean = float(np.mean(losses)) if losses else math.nan
        return {"framework": framework, "label": label, "fingerprint_id": "fp",
                "stats": {"primary": {"mean_a": mean}, "improvement": 0.01, "verdict": {"level": "exploratory"},
                          "seeds": [{"candidate": x} for x in losses] or [{"candidate": None}] * 3}}

    out = across_frameworks([comparison("cd", "cd-dead", []), comparison("cd", "cd-good", [2.0, 2.1, 2.2]),
                             comparison("ttr", "ttr-1", [2.5, 2.6, 2.7])])
    assert out["candidates"] == {"cd": "cd-good", "ttr": "ttr-1"}
    assert out["chosen_from"] == {"cd": 1, "ttr": 1}  # the dead one was no choice
    from harness.validation.report import _frameworks_section

    out["chosen_from"]["cd"] = 2
    said = "\n".join(_frameworks_section({"frameworks": out, "deviations": [], "candidates": []}))
    assert "(cd: the best of 2), which these tests do not allow for" in said
    assert math.isfinite(out["anova"]["p"]) and out["anova"]["df_between"] == 1
    assert across_frameworks([comparison("cd", "cd-dead", []), comparison("ttr", "ttr-1", [2.5, 2.6])]) is None
