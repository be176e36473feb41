"""The statistics of ``harness validate``: Welch's t-test, Cohen's d, confidence intervals, Holm-Bonferroni,
scaling-law fits with standard errors, and the verdict against the users' pre-registered criteria.

Pure numpy/scipy; nothing here touches torch or candidate code. Conventions: ``a`` is the candidate and ``b``
the baseline, and every objective is "lower is better" (validation loss, or the slope b of
loss = a + b ln N, where more negative is better). Differences are candidate minus baseline, so a negative
difference is an improvement.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats as sps

ALPHA = 0.05
MIN_IMPROVEMENT_FRAC = 0.01  # "more than 1 % improvement of the objective"
WIN_FRACTION = 0.7  # "better on at least 7 of 10 seeds", scaled to other N
STRONG_ABS_D = 0.5  # "strong": additionally |d| > 0.5 and a better slope


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


def paired(a, b) -> dict:
    """Paired t-test on the same seeds (``scipy.stats.ttest_rel``): information only, not pre-registered."""
    a, b = _arr(a), _arr(b)
    if len(a) < 2 or len(a) != len(b) or np.all(a - b == (a - b)[0]):
        return {"n": int(len(a)), "t": math.nan, "p": math.nan}
    res = sps.ttest_rel(a, b)
    return {"n": int(len(a)), "t": float(res.statistic), "p": float(res.pvalue)}


def cohens_d(a, b) -> float:
    """(mean(a) - mean(b)) / pooled sd, pooled sd = sqrt(((na-1) va + (nb-1) vb) / (na + nb - 2))."""
    a, b = _arr(a), _arr(b)
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return math.nan
    pooled = math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    diff = float(a.mean() - b.mean())
    if pooled == 0.0:
        return 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
    return diff / pooled


def interpret_d(d: float) -> str:
    """Cohen's conventional labels: |d| < 0.2 negligible, < 0.5 small, < 0.8 medium, else large."""
    if math.isnan(d):
        return "undefined"
    ad = abs(d)
    if ad < 0.2:
        return "negligible"
    if ad < 0.5:
        return "small"
    if ad < 0.8:
        return "medium"
    return "large"


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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["slope_ci"] = list(self.slope_ci)
        return d


def ols(x, y, confidence: float = 0.95) -> OLS:
    """Least squares y = intercept + slope x with the classical standard errors (residual df = n - 2)."""
    x, y = _arr(x), _arr(y)
    n = len(x)
    if n < 2 or np.ptp(x) == 0:
        return OLS(math.nan, math.nan, math.nan, math.nan, max(0, n - 2), (math.nan, math.nan), n)
    xm = x.mean()
    sxx = float(((x - xm) ** 2).sum())
    slope = float(((x - xm) * (y - y.mean())).sum() / sxx)
    intercept = float(y.mean() - slope * xm)
    df = n - 2
    if df <= 0:
        return OLS(slope, intercept, math.nan, math.nan, df, (math.nan, math.nan), n)
    resid = y - (intercept + slope * x)
    s2 = float((resid ** 2).sum() / df)
    se_slope = math.sqrt(s2 / sxx)
    se_intercept = math.sqrt(s2 * (1.0 / n + xm ** 2 / sxx))
    half = float(sps.t.ppf(0.5 + confidence / 2.0, df)) * se_slope
    return OLS(slope, intercept, se_slope, se_intercept, df, (slope - half, slope + half), n)


def scaling_fits(per_seed: list[tuple[list[float], list[float]]], confidence: float = 0.95) -> dict:
    """Scaling law loss = a + b ln N across the ladder.

    ``per_seed``: one (non-embedding params, final losses) pair of lists per seed. Returns the per-seed
    (a, b), the mean slope with its t-interval across seeds, and a pooled regression over every
    (ln N, loss) point with its standard errors."""
    seeds = []
    xs, ys = [], []
    for params, losses in per_seed:
        lx = [math.log(p) for p in params]
        fit = ols(lx, losses)
        seeds.append({"a": fit.intercept, "b": fit.slope})
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


def required_wins(n: int) -> int:
    """The users' "at least 7 of 10 seeds", scaled proportionally: ceil(0.7 N) (7 of 10, 3 of 3, 4 of 5)."""
    return math.ceil(WIN_FRACTION * n - 1e-9)


def improvement_frac(mean_candidate: float, mean_baseline: float) -> float:
    """Relative improvement of a lower-is-better objective: (baseline - candidate) / |baseline|."""
    if mean_baseline == 0 or not math.isfinite(mean_baseline):
        return math.nan
    return (mean_baseline - mean_candidate) / abs(mean_baseline)


@dataclass
class Verdict:
    level: str  # "strong" | "minimum" | "not significant" | "significant but below the minimum" | "worse" | "untestable"
    text: str
    criteria: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def verdict(p_adjusted: float, diff: float, improvement: float, n_wins: int, n_seeds: int, d: float,
            slope_better: bool | None, alpha: float = ALPHA) -> Verdict:
    """The users' pre-registered criteria (lower objective is better).

    minimum: Holm-adjusted p < alpha, improvement > 1 %, and wins on >= ceil(0.7 N) seeds;
    strong: minimum, and |d| > 0.5, and a better (more negative) scaling slope."""
    need = required_wins(n_seeds)
    scaled = "" if n_seeds == 10 else f" (the users' 7 of 10 scaled to N = {n_seeds}: ceil(0.7 x {n_seeds}) = {need})"
    sig = math.isfinite(p_adjusted) and p_adjusted < alpha
    crit = [
        {"name": f"Holm-adjusted p < {alpha}", "value": p_adjusted, "passed": bool(sig)},
        {"name": f"improvement > {MIN_IMPROVEMENT_FRAC:.0%}", "value": improvement,
         "passed": bool(math.isfinite(improvement) and improvement > MIN_IMPROVEMENT_FRAC)},
        {"name": f"better on >= {need} of {n_seeds} seeds{scaled}", "value": n_wins, "passed": n_wins >= need},
        {"name": f"Cohen's d magnitude > {STRONG_ABS_D} (strong only)", "value": d,
         "passed": bool(not math.isnan(d) and abs(d) > STRONG_ABS_D)},
        {"name": "better scaling slope (strong only)", "value": slope_better,
         "passed": bool(slope_better) if slope_better is not None else False},
    ]
    minimum = all(c["passed"] for c in crit[:3])
    if not math.isfinite(p_adjusted):
        return Verdict("untestable", "Untestable: the samples are too small or have no variance, so no p-value "
                       "exists. Not significant.", crit)
    if not sig:
        return Verdict("not significant", f"Not significant: the Holm-adjusted p = {p_adjusted:.3g} is not below "
                       f"{alpha}. The data do not show that the candidate differs from the baseline.", crit)
    if diff > 0:
        return Verdict("worse", f"Significantly WORSE than the baseline (Holm-adjusted p = {p_adjusted:.3g}).", crit)
    if not minimum:
        failed = ", ".join(c["name"] for c in crit[1:3] if not c["passed"])
        return Verdict("significant but below the minimum", f"Significant (Holm-adjusted p = {p_adjusted:.3g}) but "
                       f"the pre-registered minimum is not met: failed {failed}.", crit)
    if crit[3]["passed"] and crit[4]["passed"]:
        return Verdict("strong", f"STRONG evidence of improvement: Holm-adjusted p = {p_adjusted:.3g}, "
                       f"{improvement:.2%} better, {n_wins}/{n_seeds} seeds, |d| = {abs(d):.2f}, better slope.", crit)
    missing = ", ".join(c["name"].replace(" (strong only)", "") for c in crit[3:] if not c["passed"])
    return Verdict("minimum", f"Meets the pre-registered MINIMUM: Holm-adjusted p = {p_adjusted:.3g}, "
                   f"{improvement:.2%} better, {n_wins}/{n_seeds} seeds; not strong ({missing}).", crit)
