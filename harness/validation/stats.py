"""The statistics of ``harness validate``: the pre-registered paired t-test with the paired Cohen's d and the
CI of the mean difference, Welch's t-test as a robustness check, Holm-Bonferroni, scaling-law fits with R²,
the comparison across frameworks (one-way ANOVA, Kruskal-Wallis), and the verdict against the users' design.

Pure numpy/scipy; nothing here touches torch or candidate code. Conventions: ``a`` is the candidate and ``b``
the baseline, and every value is "lower is better" (the final validation loss, or the slope b of
loss = a + b ln N, where more negative is better). Differences are candidate minus baseline, so a negative
difference is an improvement.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats as sps

from harness.validation import protocol


# Paired differences whose sd is within this many units of rounding of the values compared are all equal.
ROUNDING_ULPS = 16
# Kruskal-Wallis's chi-square p is the textbook approximation from five values per group up; below, the p is the
# permutation distribution's: exact where the partitions number at most EXACT_PARTITIONS_MAX, else a sample.
KRUSKAL_CHI2_MIN_GROUP = 5
EXACT_PARTITIONS_MAX = 100_000
PERMUTATION_RESAMPLES = 9_999
RESAMPLING_SEED = 0


def seeded(fn) -> dict:
    """The seed argument of a scipy resampling function: ``rng`` since scipy 1.15, ``random_state`` before."""
    import inspect

    name = "rng" if "rng" in inspect.signature(fn).parameters else "random_state"
    return {name: np.random.default_rng(RESAMPLING_SEED)}


def _arr(x) -> np.ndarray:
    a = np.asarray(list(x), dtype=np.float64)
    if a.ndim != 1:
        raise ValueError("expected a one-dimensional sample")
    return a


@dataclass
class Welch:
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    sd_a: float
    sd_b: float
    diff: float  # mean_a - mean_b
    se: float
    t: float
    df: float
    p: float  # two-sided
    ci_low: float  # 95 % CI of mean_a - mean_b with the Welch-Satterthwaite df
    ci_high: float
    confidence: float = 0.95

    def to_dict(self) -> dict:
        return asdict(self)


def welch(a, b, confidence: float = 0.95) -> Welch:
    """Welch's unequal-variance t-test of mean(a) - mean(b), two-sided, with its confidence interval.

    t and p come from ``scipy.stats.ttest_ind(a, b, equal_var=False)``; the Welch-Satterthwaite degrees of
    freedom df = (va/na + vb/nb)^2 / ((va/na)^2/(na-1) + (vb/nb)^2/(nb-1)) and the CI
    diff +- t_{(1+confidence)/2, df} * se are computed here. Degenerate samples (n < 2, or both variances 0)
    give NaN t, df and p, which every caller reads as "cannot be tested"."""
    a, b = _arr(a), _arr(b)
    na, nb = len(a), len(b)
    ma, mb = float(a.mean()) if na else math.nan, float(b.mean()) if nb else math.nan
    va = float(a.var(ddof=1)) if na > 1 else math.nan
    vb = float(b.var(ddof=1)) if nb > 1 else math.nan
    diff = ma - mb
    nan = math.nan
    if na < 2 or nb < 2:
        return Welch(na, nb, ma, mb, math.sqrt(va) if va == va else nan, math.sqrt(vb) if vb == vb else nan,
                     diff, nan, nan, nan, nan, nan, nan, confidence)
    se2 = va / na + vb / nb
    se = math.sqrt(se2)
    if se == 0.0:
        return Welch(na, nb, ma, mb, 0.0, 0.0, diff, 0.0, nan, nan, nan, diff, diff, confidence)
    df = se2 ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    with warnings.catch_warnings():  # nearly identical samples: scipy warns, the numbers stay defined
        warnings.simplefilter("ignore", RuntimeWarning)
        res = sps.ttest_ind(a, b, equal_var=False)
    half = float(sps.t.ppf(0.5 + confidence / 2.0, df)) * se
    return Welch(na, nb, ma, mb, math.sqrt(va), math.sqrt(vb), diff, se, float(res.statistic), df,
                 float(res.pvalue), diff - half, diff + half, confidence)


@dataclass
class Paired:
    """The pre-registered primary test: candidate and baseline trained on the same seeds, compared seed by seed."""

    n: int
    mean_a: float
    mean_b: float
    sd_a: float
    sd_b: float
    diff: float  # mean of the per-seed differences a - b
    sd_diff: float
    se: float
    t: float
    df: int  # n - 1
    p: float  # two-sided
    ci_low: float  # CI of the mean difference, t with n - 1 df
    ci_high: float
    d: float  # Cohen's d for paired samples: mean difference / sd of the differences
    d_label: str
    confidence: float = 0.95

    def to_dict(self) -> dict:
        return asdict(self)


def paired(a, b, confidence: float = 0.95) -> Paired:
    """Paired t-test of a - b on matched seeds, ``scipy.stats.ttest_rel``, two-sided, with the paired d and the CI.

    t = mean(d) / (sd(d) / sqrt(n)) with n - 1 df; the CI is mean(d) +- t_{(1+confidence)/2, n-1} sd(d)/sqrt(n).
    Degenerate samples (n < 2, or every difference equal) give NaN t and p, read as "cannot be tested". Differences
    equal up to the rounding of the subtraction count as equal: otherwise one unit in the last place would decide
    between "cannot be tested" and a t of 10^15."""
    a, b = _arr(a), _arr(b)
    if len(a) != len(b):
        raise ValueError("a paired test needs one candidate and one baseline value per seed")
    n = len(a)
    nan = math.nan
    sd = (lambda x: float(x.std(ddof=1)) if n > 1 else nan)
    diffs = a - b
    ma, mb = (float(a.mean()), float(b.mean())) if n else (nan, nan)
    md = float(diffs.mean()) if n else nan
    if n < 2:
        return Paired(n, ma, mb, sd(a), sd(b), md, nan, nan, nan, max(0, n - 1), nan, nan, nan, nan, "undefined",
                      confidence)
    sdd = float(diffs.std(ddof=1))
    se = sdd / math.sqrt(n)
    if sdd <= ROUNDING_ULPS * np.finfo(float).eps * float(max(np.abs(a).max(), np.abs(b).max())):
        d = 0.0 if md == 0.0 else math.copysign(math.inf, md)
        return Paired(n, ma, mb, sd(a), sd(b), md, 0.0, 0.0, nan, n - 1, nan, md, md, d, interpret_d(d), confidence)
    res = sps.ttest_rel(a, b)
    half = float(sps.t.ppf(0.5 + confidence / 2.0, n - 1)) * se
    d = md / sdd
    return Paired(n, ma, mb, sd(a), sd(b), md, sdd, se, float(res.statistic), n - 1, float(res.pvalue),
                  md - half, md + half, d, interpret_d(d), confidence)


def interpret_d(d: float) -> str:
    """Cohen's conventional labels: |d| < 0.2 negligible, < 0.5 small, < 0.8 medium, else large; undefined where
    there is no d, or no spread to measure it by (every difference the same, not zero: d is infinite)."""
    if not math.isfinite(d):
        return "undefined"
    ad = abs(d)
    if ad < 0.2:
        return "negligible"
    if ad < 0.5:
        return "small"
    if ad < 0.8:
        return "medium"
    return "large"


def describe(values) -> dict:
    """n, mean and sample standard deviation of the finite values (None and non-finite ones left out)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    return {"n": len(xs), "mean": float(np.mean(xs)) if xs else math.nan,
            "sd": float(np.std(xs, ddof=1)) if len(xs) > 1 else math.nan}


def format_against(value: float, threshold: float, digits: int = 3, style: str = "g") -> str:
    """``value`` to ``digits`` significant digits (``style`` "g") or decimals ("f"), or to more where fewer would
    print it on the other side of ``threshold`` or equal to it, so that a number never contradicts the criterion it
    is judged by: p = 0.049996 against 0.05 prints 0.049996, not 0.05, and |d| = 0.5004 against 0.5 prints 0.5004,
    not 0.50."""
    value, threshold = float(value), float(threshold)
    if not math.isfinite(value):
        return f"{value:g}"
    side = (value < threshold, value == threshold)
    for d in range(digits, 18):
        text = f"{value:.{d}{style}}"
        if (float(text) < threshold, float(text) == threshold) == side:
            return text
    return repr(value)


def format_p(p) -> str:
    """A p-value as every report prints it: three significant digits, two below 0.001, and more where fewer would
    put it on the other side of the design's alpha or on it; a dash when there is none."""
    if p is None or math.isnan(float(p)):
        return "–"
    return format_against(p, protocol.ALPHA, 2 if p < 1e-3 else 3)


def holm(pvalues) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order.

    Sort ascending, p_(1) <= ... <= p_(m); adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).
    Rejecting where the adjusted p < alpha is Holm's step-down procedure at family-wise level alpha.
    NaN p-values (untestable comparisons) stay NaN and do not count in m."""
    p = [float(x) for x in pvalues]
    idx = [i for i, x in enumerate(p) if not math.isnan(x)]
    m = len(idx)
    order = sorted(idx, key=lambda i: p[i])
    out = [math.nan] * len(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def mean_ci(x, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the t-interval of the mean with n-1 degrees of freedom (NaN bounds for n < 2)."""
    x = _arr(x)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if n < 2:
        return m, math.nan, math.nan
    half = float(sps.t.ppf(0.5 + confidence / 2.0, n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    return m, m - half, m + half


@dataclass
class OLS:
    slope: float
    intercept: float
    se_slope: float
    se_intercept: float
    df: int
    slope_ci: tuple[float, float]
    n: int
    r2: float  # 1 - SSR / SST; NaN when y is constant or fewer than 2 points

    def to_dict(self) -> dict:
        d = asdict(self)
        d["slope_ci"] = list(self.slope_ci)
        return d


def ols(x, y, confidence: float = 0.95) -> OLS:
    """Least squares y = intercept + slope x with the classical standard errors (residual df = n - 2) and R²."""
    x, y = _arr(x), _arr(y)
    n = len(x)
    nan = math.nan
    if n < 2 or np.ptp(x) == 0:
        return OLS(nan, nan, nan, nan, max(0, n - 2), (nan, nan), n, nan)
    xm = x.mean()
    sxx = float(((x - xm) ** 2).sum())
    slope = float(((x - xm) * (y - y.mean())).sum() / sxx)
    intercept = float(y.mean() - slope * xm)
    resid = y - (intercept + slope * x)
    ssr, sst = float((resid ** 2).sum()), float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - ssr / sst if sst > 0 else nan
    df = n - 2
    if df <= 0:
        return OLS(slope, intercept, nan, nan, df, (nan, nan), n, r2)
    s2 = ssr / df
    se_slope = math.sqrt(s2 / sxx)
    se_intercept = math.sqrt(s2 * (1.0 / n + xm ** 2 / sxx))
    half = float(sps.t.ppf(0.5 + confidence / 2.0, df)) * se_slope
    return OLS(slope, intercept, se_slope, se_intercept, df, (slope - half, slope + half), n, r2)


def scaling_fits(per_seed: list[tuple[list[float], list[float]]], confidence: float = 0.95) -> dict:
    """Scaling law loss = a + b ln N across the ladder.

    ``per_seed``: one (non-embedding params, final losses) pair of lists per seed. Returns each seed's fit
    (a, b, R²; R² is 1 by construction with two sizes), the mean slope with its t-interval across seeds, and a
    pooled regression over every (ln N, loss) point with its standard errors and R²."""
    seeds = []
    xs, ys = [], []
    for params, losses in per_seed:
        lx = [math.log(p) for p in params]
        fit = ols(lx, losses)
        seeds.append({"a": fit.intercept, "b": fit.slope, "r2": fit.r2, "sizes": len(lx)})
        xs += lx
        ys += list(losses)
    slopes = [s["b"] for s in seeds if math.isfinite(s["b"])]
    m, lo, hi = mean_ci(slopes, confidence)
    intercepts = [s["a"] for s in seeds if math.isfinite(s["a"])]
    pooled = ols(xs, ys, confidence) if xs else None
    return {
        "per_seed": seeds,
        "mean_slope": m,
        "slope_ci": [lo, hi],
        "mean_intercept": float(np.mean(intercepts)) if intercepts else math.nan,
        "pooled": pooled.to_dict() if pooled else None,
    }


def wins(candidate, baseline) -> int:
    """Seeds on which the candidate is strictly better (lower) than the baseline run with the same seed."""
    return int(sum(1 for c, b in zip(candidate, baseline) if c < b))


def improvement_frac(mean_candidate: float, mean_baseline: float) -> float:
    """Relative improvement of a lower-is-better value: (baseline - candidate) / |baseline|."""
    if mean_baseline == 0 or not math.isfinite(mean_baseline):
        return math.nan
    return (mean_baseline - mean_candidate) / abs(mean_baseline)


# ----------------------------------------------------------------------------------------------------------
# Across frameworks (H2)


def across_groups(groups: dict[str, list[float]], alpha: float = 0.05) -> dict:
    """Do the groups (one list of per-seed final losses per framework) differ?

    One-way ANOVA (``scipy.stats.f_oneway``) and its rank-based counterpart Kruskal-Wallis
    (``scipy.stats.kruskal``) over all groups; then every pair by Welch's t-test (the groups are different
    models), Holm-adjusted over the pairs. Needs at least two groups of two values; NaN otherwise."""
    names = [k for k, v in groups.items() if len(v) >= 2]
    samples = [_arr(groups[k]) for k in names]
    out = {"groups": {k: describe(groups[k]) for k in groups},
           "anova": {"F": math.nan, "df_between": len(names) - 1, "df_within": sum(map(len, samples)) - len(names),
                     "p": math.nan},
           "kruskal": {"H": math.nan, "df": len(names) - 1, "p": math.nan}, "pairs": []}
    if len(names) < 2:
        return out
    pooled_constant = all(np.ptp(x) == 0 for x in samples)
    with warnings.catch_warnings():  # constant groups: scipy warns and returns NaN, which is what we report
        warnings.simplefilter("ignore")
        if not pooled_constant:
            f = sps.f_oneway(*samples)
            out["anova"].update(F=float(f.statistic), p=float(f.pvalue))
        if len({float(v) for x in samples for v in x}) > 1:
            out["kruskal"].update(kruskal(samples))
    pairs = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            w = welch(samples[i], samples[j])
            pairs.append({"a": names[i], "b": names[j], "diff": w.diff, "t": w.t, "df": w.df, "p": w.p,
                          "ci_low": w.ci_low, "ci_high": w.ci_high})
    for pair, p_adj in zip(pairs, holm([p["p"] for p in pairs])):
        pair["p_holm"] = p_adj
        pair["significant"] = bool(math.isfinite(p_adj) and p_adj < alpha)
    out["pairs"] = pairs
    return out


def kruskal(samples: list[np.ndarray]) -> dict:
    """Kruskal-Wallis H with its p-value: the chi-square approximation where every group has at least
    ``KRUSKAL_CHI2_MIN_GROUP`` values, else the permutation distribution of H (for 3 against 3 values the
    approximation gives p = 0.0495 where the exact p is 0.1)."""
    h = sps.kruskal(*samples)
    if min(map(len, samples)) >= KRUSKAL_CHI2_MIN_GROUP:
        return {"H": float(h.statistic), "p": float(h.pvalue), "p_method": "chi-square approximation"}
    sizes = [len(x) for x in samples]
    partitions = math.factorial(sum(sizes)) // math.prod(math.factorial(n) for n in sizes)
    exact = partitions <= EXACT_PARTITIONS_MAX
    # A permutation moves values between groups, so the pooled ranks and the tie correction stay as they are: H
    # orders the partitions as the sum over groups of (rank sum)^2 / size does.
    ranks = np.split(sps.rankdata(np.concatenate(samples)), np.cumsum(sizes)[:-1])

    def rank_sums(*groups, axis=-1):
        return sum(g.sum(axis=axis) ** 2 / g.shape[axis] for g in groups)

    perm = sps.permutation_test(ranks, rank_sums, permutation_type="independent", vectorized=True,
                                n_resamples=partitions if exact else PERMUTATION_RESAMPLES, alternative="greater",
                                **seeded(sps.permutation_test))
    method = "exact permutation" if exact else f"Monte Carlo permutation, {PERMUTATION_RESAMPLES} resamples"
    return {"H": float(h.statistic), "p": float(perm.pvalue), "p_method": method}


# ----------------------------------------------------------------------------------------------------------
# The verdict


@dataclass
class Verdict:
    level: str  # see LEVELS
    text: str
    criteria: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


LEVELS = ("strong", "minimum", "minimum, strong pending interpretation", "minimum, strong pending",
          "below the minimum", "not significant", "worse", "untestable", "failed", "exploratory")


def criterion(name: str, value, passed: bool | None, tier: str, note: str = "", threshold: float | None = None) -> dict:
    """One line of the design's criteria; ``passed`` None means not assessable yet (pending or not measured);
    ``threshold``: the number ``value`` is judged against, so that it is printed on its side of it."""
    return {"name": name, "value": value, "passed": passed, "tier": tier, "note": note, "threshold": threshold}


def verdict(*, primary: Paired, p_holm: float, n_wins: int, slope: dict | None, flop_ratio: float | None,
            interpretation: str | None, deviations: list[str]) -> Verdict:
    """The design's criteria on the final validation loss at the reference size (lower is better).

    minimum: Holm-adjusted two-tailed p < alpha, more than 1 % lower mean loss, better on at least 7 of 10
    seeds, and a better scaling slope by its own test (paired over seeds, Holm-adjusted p < alpha, negative);
    strong: the minimum, and |paired d| > 0.5, a FLOP ratio of at most 1.10 (the evaluator's), and an
    interpretation filled in by the researcher (pending until then).

    A run with deviations from the design is exploratory whatever its numbers: the criteria are shown, no claim
    is drawn."""
    improvement = improvement_frac(primary.mean_a, primary.mean_b)
    sig = math.isfinite(p_holm) and p_holm < protocol.ALPHA
    slope_ok = None if slope is None else bool(math.isfinite(slope.get("p_holm", math.nan))
                                                and slope["p_holm"] < protocol.ALPHA and slope["diff"] < 0)
    flops_ok = None if flop_ratio is None or not math.isfinite(flop_ratio) else flop_ratio <= protocol.MAX_FLOP_RATIO
    crit = [
        criterion(f"two-tailed paired p (Holm) < {protocol.ALPHA}", p_holm, bool(sig), "minimum",
                  threshold=protocol.ALPHA),
        criterion(f"final loss more than {protocol.MIN_IMPROVEMENT_FRAC:.0%} lower", improvement,
                  bool(math.isfinite(improvement) and improvement > protocol.MIN_IMPROVEMENT_FRAC), "minimum",
                  threshold=protocol.MIN_IMPROVEMENT_FRAC),
        criterion(f"better on at least {protocol.MIN_WINS} of {len(protocol.SEEDS)} seeds", f"{n_wins} of {primary.n}",
                  n_wins >= protocol.MIN_WINS and primary.n == len(protocol.SEEDS), "minimum"),
        criterion(f"better scaling slope (paired slope test, Holm p < {protocol.ALPHA}, negative difference)",
                  None if slope is None else slope.get("p_holm"), slope_ok, "minimum",
                  "" if slope is not None else "not measured: one size per seed"),
        criterion(f"|paired d| > {protocol.STRONG_ABS_D}", primary.d,
                  bool(math.isfinite(primary.d) and abs(primary.d) > protocol.STRONG_ABS_D), "strong",
                  threshold=math.copysign(protocol.STRONG_ABS_D, primary.d) if not math.isnan(primary.d) else None),
        criterion(f"FLOP ratio at most {protocol.MAX_FLOP_RATIO:.2f}", flop_ratio, flops_ok, "strong",
                  "" if flops_ok is not None else "the evaluator's FLOP ratio is missing",
                  threshold=protocol.MAX_FLOP_RATIO),
        criterion("interpretable mechanism (the researcher's interpretation)", interpretation,
                  True if interpretation else None, "strong", "" if interpretation else "pending"),
    ]
    minimum = [c for c in crit if c["tier"] == "minimum"]
    strong = [c for c in crit if c["tier"] == "strong"]
    if deviations:
        return Verdict("exploratory", "Exploratory: protocol not followed (" + "; ".join(deviations) + "). The "
                       "numbers below describe this run only; no claim is drawn from them.", crit)
    if not math.isfinite(primary.p):
        return Verdict("untestable", "Untestable: no p-value exists (too few seeds, or every seed gives the same "
                       "difference). No claim is drawn.", crit)
    if not sig:
        return Verdict("not significant", f"Not significant: the Holm-adjusted p = {format_p(p_holm)} is not below "
                       f"{protocol.ALPHA}. The data do not show that the candidate differs from the baseline.", crit)
    if primary.diff > 0:
        return Verdict("worse", f"Significantly WORSE than the baseline (Holm-adjusted p = {format_p(p_holm)}, mean "
                       f"difference {primary.diff:+.4g}).", crit)
    failed = [c["name"] for c in minimum if not c["passed"]]
    if failed:
        return Verdict("below the minimum", f"Significant (Holm-adjusted p = {format_p(p_holm)}) but the design's "
                       f"minimum is not met: {'; '.join(failed)}.", crit)
    lower = format_against(100 * improvement, 100 * protocol.MIN_IMPROVEMENT_FRAC, 2, "f")
    evidence = (f"Holm-adjusted p = {format_p(p_holm)}, {lower} % lower final loss, {n_wins}/{primary.n} seeds, "
                "better slope")
    head = f"Meets the design's MINIMUM: {evidence}"
    if all(c["passed"] for c in strong):
        d = format_against(abs(primary.d), protocol.STRONG_ABS_D, 2, "f")
        flops = format_against(flop_ratio, protocol.MAX_FLOP_RATIO, 3, "f")
        return Verdict("strong", f"STRONG: {evidence}, |d| = {d}, FLOP ratio {flops}, interpreted by the researcher.",
                       crit)
    pending = [c for c in strong if c["passed"] is None]
    if all(c["passed"] is not False for c in strong):
        if pending == [crit[-1]]:
            return Verdict("minimum, strong pending interpretation", f"{head}. Strong once the researcher records an "
                           "interpretation of the mechanism (`harness validate --interpret`).", crit)
        return Verdict("minimum, strong pending", f"{head}. Strong only once these are known: "
                       + "; ".join(f"{c['name']} ({c['note']})" for c in pending) + ".", crit)
    missing = "; ".join(c["name"] for c in strong if c["passed"] is False)
    return Verdict("minimum", f"{head}. Not strong: {missing}.", crit)
