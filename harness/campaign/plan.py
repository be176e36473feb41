"""The campaign's pre-registration: what will be run and judged, written before anything runs.

It holds the hypotheses, the success criteria, the seeds, the tuning plan, the profile and its digest, the
harness code hash, the proposer and the exact OpenEvolve configs. A campaign started again in the same folder
must ask for the same plan; the later phases compare what happened with it and report every deviation.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.trusted.profiles import ConfigError
from harness.validation import protocol

HYPOTHESES = {
    "H1": "evolution finds attention variants with better scaling than the framework's standard variant",
    "H2": "the three frameworks differ in how well they evolve",
    "H4": "improvements hold across sizes",
}
PREREGISTRATION_JSON = "preregistration.json"
PREREGISTRATION_MD = "preregistration.md"


@dataclass(frozen=True)
class Settings:
    """What the command line asks for: the part of the plan that must not change on a resume."""

    frameworks: tuple[str, ...]
    profile: str
    profile_digest: str
    iterations: int
    proposer: dict  # {"kind": "builtin", "seed": S} or {"kind": "llm", "api_base": URL, "model": M}
    seeds: tuple[int, ...]
    tuning: str
    trials: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["frameworks"], d["seeds"] = list(self.frameworks), list(self.seeds)
        return d


def build(settings: Settings, profile, code_hash: str, configs: dict[str, str]) -> dict:
    """The pre-registration document. ``configs``: {framework: the OpenEvolve config text the campaign runs}."""
    space = protocol.search_space(profile)
    return {
        "settings": settings.to_dict(),
        "hypotheses": HYPOTHESES,
        "criteria": {
            "primary": "final validation loss at the reference size, paired t-test by seed (scipy.stats.ttest_rel), "
                       "Holm-adjusted across every candidate and framework",
            "minimum": [f"two-tailed Holm-adjusted p < {protocol.ALPHA}",
                        f"final loss more than {protocol.MIN_IMPROVEMENT_FRAC:.0%} lower",
                        f"better on at least {protocol.MIN_WINS} of {len(protocol.SEEDS)} seeds",
                        "a better scaling slope by its paired test"],
            "strong": [f"|paired d| > {protocol.STRONG_ABS_D}", f"FLOP ratio at most {protocol.MAX_FLOP_RATIO:.2f}",
                       "an interpretable mechanism (the researcher's interpretation)"],
            "frameworks": "one-way ANOVA and Kruskal-Wallis on the best candidates' final losses, Holm-adjusted pairs",
        },
        "tuning_plan": {"mode": settings.tuning, "trials_per_side": settings.trials, "space": space.text(),
                        "pruner": "median (Optuna's rule, 5 start-up trials)"},
        "reference_rung": list(profile.reference),
        "code_hash": code_hash,
        "configs": {fw: {"sha256": hashlib.sha256(text.encode()).hexdigest(), "text": text}
                    for fw, text in sorted(configs.items())},
        "protocol_deviations": protocol.deviations(profile, list(settings.seeds), settings.tuning, settings.trials,
                                                   ladder=True)
                               + protocol.evolution_deviations(list(settings.frameworks), settings.iterations),
    }


def load(out_dir: Path) -> dict | None:
    path = Path(out_dir) / PREREGISTRATION_JSON
    return json.loads(path.read_text()) if path.exists() else None


def write(out_dir: Path, prereg: dict) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (PREREGISTRATION_JSON + ".tmp")
    tmp.write_text(json.dumps(prereg, indent=1))
    tmp.replace(out_dir / PREREGISTRATION_JSON)
    (out_dir / PREREGISTRATION_MD).write_text(render(prereg))


def check_same_plan(prereg: dict, settings: Settings, out_dir: Path) -> None:
    """A resumed campaign must ask for the plan it registered: otherwise its results would answer another one."""
    before = prereg["settings"]
    now = settings.to_dict()
    changed = [f"{k}: registered {before.get(k)!r}, asked {now[k]!r}" for k in now if before.get(k) != now[k]]
    if changed:
        raise ConfigError(f"{out_dir} holds a campaign registered with another plan ({'; '.join(changed)}). Run "
                          "the same command to resume it, or choose a new --out")


def render(prereg: dict) -> str:
    s = prereg["settings"]
    proposer = s["proposer"]
    who = (f"the built-in proposer (seed {proposer['seed']}, no network)" if proposer["kind"] == "builtin"
           else f"model `{proposer['model']}` at {proposer['api_base']}")
    md = ["# Pre-registration\n",
          "Written before the campaign ran anything. The final report compares what happened with this plan.\n",
          "## Hypotheses\n"]
    md += [f"- **{k}**: {v}" for k, v in prereg["hypotheses"].items()]
    c = prereg["criteria"]
    md += ["", "## Plan\n",
           f"- frameworks: {', '.join(s['frameworks'])}; {s['iterations']} iterations each of stock `openevolve-run`, "
           f"proposals by {who}",
           f"- profile `{s['profile']}` (digest `{s['profile_digest']}`), reference size {tuple(prereg['reference_rung'])}",
           f"- harness code hash `{prereg['code_hash']}`",
           f"- validation of the best valid program of each framework against its seed: seeds {s['seeds']}",
           f"- tuning: {prereg['tuning_plan']['mode']}, {prereg['tuning_plan']['trials_per_side']} trial(s) per side; "
           f"{prereg['tuning_plan']['space']}; pruner: {prereg['tuning_plan']['pruner']}",
           "", "## Success criteria\n", f"- primary: {c['primary']}",
           "- minimum: " + "; ".join(c["minimum"]), "- strong: the minimum, and " + "; ".join(c["strong"]),
           f"- across frameworks: {c['frameworks']}", ""]
    dev = prereg["protocol_deviations"]
    md.append("## Known deviations from the users' design\n")
    md += [f"- {d}" for d in dev] if dev else ["None: the plan is the design."]
    md += ["", "The verdicts of a plan with deviations are exploratory.", "", "## OpenEvolve configs\n"]
    md += [f"- {fw}: sha256 `{cfg['sha256'][:16]}` (the text is in `{PREREGISTRATION_JSON}`)"
           for fw, cfg in prereg["configs"].items()]
    return "\n".join(md) + "\n"
