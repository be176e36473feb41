"""The three frameworks: where each seed lives and what its attention class is called."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# The keywords the frozen scaffold constructs every attention class with (harness.scaffold). Here, not there, so
# that the static gate checks them without importing torch.
ATTENTION_KWARGS = ("d_model", "n_heads", "dropout", "max_seq_len")


@dataclass(frozen=True)
class Framework:
    name: str
    title: str
    class_name: str

    @property
    def seed_path(self) -> Path:
        return REPO_ROOT / "initial_programs" / f"{self.name}.py"

    def seed_source(self) -> str:
        return self.seed_path.read_text()


FRAMEWORKS: dict[str, Framework] = {
    "cd": Framework("cd", "coefficient dynamics (Sieber et al. 2025)", "CoefficientDynamicsAttention"),
    "ttr": Framework("ttr", "test-time regression (Wang, Shi & Fox 2025)", "TestTimeRegressionAttention"),
    "mm": Framework("mm", "matrix mixer (Hwang et al. 2024)", "MatrixMixerAttention"),
}


CLASS_TO_FRAMEWORK = {fw.class_name: fw.name for fw in FRAMEWORKS.values()}
_CLASS_RE = re.compile(r"^\s*class\s+(" + "|".join(map(re.escape, CLASS_TO_FRAMEWORK)) + r")\b", re.M)


def framework_of(code: str) -> str | None:
    """The framework whose attention class the code defines (cd, ttr, mm), or None."""
    found = _CLASS_RE.findall(code or "")
    return CLASS_TO_FRAMEWORK[found[0]] if found else None


def get_framework(name: str) -> Framework:
    if name not in FRAMEWORKS:
        from harness.trusted.profiles import ConfigError

        raise ConfigError(f"unknown framework {name!r}; choose one of {sorted(FRAMEWORKS)}")
    return FRAMEWORKS[name]
