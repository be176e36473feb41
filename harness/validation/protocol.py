"""The users' pre-registered experiment design, as data: the one definition that ``harness validate`` (and the
campaign built on it) reads, and the deviations of a run from it.

The design (hypotheses H1 better scaling, H2 frameworks differ, H4 improvements hold across sizes):
- validation at a fixed size, the reference rung, with seeds 42..51 at the full horizon (the ``full``
  profile: 100k steps); the primary comparison is the final validation loss, paired by seed;
- minimum success: two-tailed p < 0.05, more than 1 % lower final loss, better on at least 7 of 10 seeds,
  and a better scaling slope; strong: also |d| > 0.5, at most 10 % more FLOPs, and an interpretable mechanism;
- tuning, option A per variant (option B shared): Optuna over lr [1e-4, 1e-3], warmup [500, 2000] steps,
  weight decay [0, 0.1] and batch size {32, 64, 128}, 100 trials at 50k steps, with a median pruner.

A run that departs from any of these is exploratory: its report names every deviation and draws no verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.trusted.profiles import PROFILES, Profile, get_profile
from harness.trusted.scoring import rungs_for

DESIGN_PROFILE = "full"
SEEDS = tuple(range(42, 52))
ALPHA = 0.05  # two-tailed, after Holm's correction across every candidate and framework compared
MIN_IMPROVEMENT_FRAC = 0.01  # "more than 1 % better final loss"
MIN_WINS = 7  # "better on at least 7 of 10 seeds"
STRONG_ABS_D = 0.5  # paired Cohen's d
MAX_FLOP_RATIO = 1.10  # "no more than 10 % more FLOPs", the evaluator's forward+backward FLOP ratio
TUNING_TRIALS = 100  # per tuned side
TUNING_HORIZON_FRACTION = 0.5  # 50k of the full protocol's 100k steps
TUNING_MODES = ("optuna", "shared")  # option A (per variant) and option B (tuned on the standard variant)
EVOLUTION_ITERATIONS = 35  # OpenEvolve iterations per framework
DESIGN_FRAMEWORKS = ("cd", "ttr", "mm")  # all three evolved and compared (H2)

# The design's search space under the ``full`` profile (lr 1e-3, warmup 1000 steps of 100k, batch 64).
# Other profiles scale each range by their own lr, length and batch, so that a smoke run searches the same
# region relative to its recipe; that scaling is itself a deviation, reported as such.
LR_RANGE = (1e-4, 1e-3)  # log-uniform
WARMUP_RANGE_STEPS = (500, 2000)  # integer
WEIGHT_DECAY_RANGE = (0.0, 0.1)  # uniform
BATCH_CHOICES_SEQS = (32, 64, 128)  # categorical


@dataclass(frozen=True)
class SearchSpace:
    lr: tuple[float, float]
    warmup_steps: tuple[int, int]
    weight_decay: tuple[float, float]
    batch_size_seqs: tuple[int, ...]
    steps: int  # the tuning horizon

    def text(self) -> str:
        return (f"lr log-uniform [{self.lr[0]:.3g}, {self.lr[1]:.3g}], warmup steps integer "
                f"[{self.warmup_steps[0]}, {self.warmup_steps[1]}], weight decay uniform "
                f"[{self.weight_decay[0]:.3g}, {self.weight_decay[1]:.3g}], batch size (sequences) "
                f"{{{', '.join(map(str, self.batch_size_seqs))}}}; {self.steps} steps per trial")


def search_space(profile: Profile) -> SearchSpace:
    """The design's space, scaled from the ``full`` recipe to ``profile``'s (identical under ``full``)."""
    full = get_profile(DESIGN_PROFILE)
    lr_scale = profile.lr / full.lr
    step_scale = profile.steps / full.steps
    batch_scale = profile.batch_size_seqs / full.batch_size_seqs
    steps = max(1, round(profile.steps * TUNING_HORIZON_FRACTION))
    w_lo, w_hi = (max(1, round(w * step_scale)) for w in WARMUP_RANGE_STEPS)
    return SearchSpace(
        lr=(LR_RANGE[0] * lr_scale, LR_RANGE[1] * lr_scale),
        warmup_steps=(min(w_lo, steps), min(max(w_hi, w_lo), steps)),
        weight_decay=WEIGHT_DECAY_RANGE,
        batch_size_seqs=tuple(sorted({max(1, round(b * batch_scale)) for b in BATCH_CHOICES_SEQS})),
        steps=steps,
    )


def deviations(profile: Profile, seeds: list[int], tuning: str, trials: int, ladder: bool) -> list[str]:
    """Every way a validation departs from the design, each a short phrase; empty when it follows it."""
    out = []
    full = get_profile(DESIGN_PROFILE)
    if profile.name != DESIGN_PROFILE:
        out.append(f"profile `{profile.name}` instead of `{DESIGN_PROFILE}` ({profile.steps} steps per run, not "
                   f"{full.steps}; the tuning space scaled to its recipe)")
    elif (profile.steps, tuple(profile.ladder), profile.reference_rung) != (full.steps, tuple(full.ladder),
                                                                          full.reference_rung):
        out.append("the `full` profile overridden (steps, ladder or reference rung)")
    if profile.name == DESIGN_PROFILE and profile.data_source == "synthetic":
        out.append(f"synthetic text instead of TinyStories (`{PROFILES[DESIGN_PROFILE].data_source}`)")
    if tuple(seeds) != SEEDS:
        out.append(f"seeds {_seed_text(seeds)} instead of {SEEDS[0]}..{SEEDS[-1]}")
    if tuning not in TUNING_MODES:
        out.append(f"tuning `{tuning}`, not a design option")
    if trials <= 0:
        out.append("no tuning: the profile's defaults")
    elif trials != TUNING_TRIALS:
        out.append(f"{trials} tuning trial(s) per tuned side instead of {TUNING_TRIALS}")
    if not ladder and len(rungs_for(profile)) < 2:  # a scaling_slope objective trains the ladder anyway
        out.append("the scaling ladder not trained: no slope, so the minimum criteria cannot all be assessed")
    return out


def evolution_deviations(frameworks: list[str], iterations: int) -> list[str]:
    """How a campaign's evolution departs from the design: fewer or more iterations, or not every framework."""
    out = []
    if iterations != EVOLUTION_ITERATIONS:
        out.append(f"{iterations} evolution iteration(s) per framework instead of {EVOLUTION_ITERATIONS}")
    left_out = [fw for fw in DESIGN_FRAMEWORKS if fw not in frameworks]
    if left_out:
        out.append(f"framework(s) {', '.join(left_out)} not evolved: H2 compares {len(frameworks)} of "
                   f"{len(DESIGN_FRAMEWORKS)}")
    return out


def _seed_text(seeds: list[int]) -> str:
    seeds = list(seeds)
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}..{seeds[-1]}"
    return ", ".join(map(str, seeds)) or "none"
