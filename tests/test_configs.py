"""The OpenEvolve configs: every key is one OpenEvolve 0.4.0 really reads, and the values agree with the
evaluator (OpenEvolve ignores unknown keys silently and falls back to defaults on a bad path)."""

import dataclasses
import typing

import pytest
import yaml
from openevolve.config import Config
from openevolve.llm.base import LLMInterface

from harness.trusted.frameworks import FRAMEWORKS, REPO_ROOT
from harness.trusted.profiles import PROFILES

CONFIGS = {fw: REPO_ROOT / "openevolve_configs" / f"{fw}.yaml" for fw in FRAMEWORKS}

# Declared by OpenEvolve 0.4.0 but never read, or not forwarded to its workers: setting them would
# suggest a protection that does not exist.
INEFFECTIVE = {"enforce_evolve_blocks", "diff_pattern", "memory_limit_mb", "cpu_limit", "distributed",
               "enable_artifacts", "max_artifact_storage", "evaluator_system_message", "use_meta_prompting"}


def _dataclass_of(annotation):
    for candidate in (annotation, *typing.get_args(annotation)):
        if dataclasses.is_dataclass(candidate):
            return candidate
        for inner in typing.get_args(candidate):
            if dataclasses.is_dataclass(inner):
                return inner
    return None


def unknown_keys(data: dict, cls, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls, localns={"LLMInterface": LLMInterface})
    problems = []
    for key, value in data.items():
        if key not in hints:
            problems.append(prefix + key)
            continue
        inner = _dataclass_of(hints[key])
        if inner is not None and isinstance(value, dict):
            problems += unknown_keys(value, inner, f"{prefix}{key}.")
        elif inner is not None and isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    problems += unknown_keys(item, inner, f"{prefix}{key}[{i}].")
    return problems


def raw(fw):
    return yaml.safe_load(CONFIGS[fw].read_text())


@pytest.mark.parametrize("fw", sorted(FRAMEWORKS))
def test_every_key_is_known_to_openevolve(fw):
    data = raw(fw)
    assert unknown_keys(data, Config) == []
    flat = yaml.safe_dump(data)
    assert not [k for k in INEFFECTIVE if f"{k}:" in flat]


def test_unknown_key_detection_works():
    assert unknown_keys({"evaluator": {"timout": 1}, "novelty": {}}, Config) == ["evaluator.timout", "novelty"]
    assert unknown_keys({"llm": {"models": [{"name": "m", "wieght": 1}]}}, Config) == ["llm.models[0].wieght"]


@pytest.mark.parametrize("fw", sorted(FRAMEWORKS))
def test_values_agree_with_the_evaluator(fw, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    config = Config.from_yaml(str(CONFIGS[fw]))
    assert config.diff_based_evolution
    assert config.max_code_length >= 2 * len(FRAMEWORKS[fw].seed_source())
    assert config.evaluator.max_retries == 0
    assert config.evaluator.cascade_evaluation is False  # the evaluator defines no stage functions
    assert config.evaluator.timeout >= 1.2 * max(p.hard_limit_s for p in PROFILES.values())
    assert config.database.population_size >= config.max_iterations
    assert config.database.max_snapshot_artifacts is None
    assert config.max_iterations % config.checkpoint_interval == 0
    assert config.prompt.include_artifacts
    assert config.llm.models and config.llm.models[0].api_base.startswith("http://127.0.0.1:")
    assert config.llm.api_key == "unused"  # taken from the environment, never from the file
    message = config.prompt.system_message
    assert "EVOLVE-BLOCK" in message and "combined_score" in message
    for code in ("policy", "causality", "param_parity", "flop_parity", "runtime", "memory", "leak_after_training"):
        assert code in message


def test_the_three_configs_differ_only_in_their_framework_text():
    def skeleton(fw):
        data = raw(fw)
        data["prompt"].pop("system_message")
        return data

    assert skeleton("cd") == skeleton("ttr") == skeleton("mm")
    assert "coefficient" in raw("cd")["prompt"]["system_message"]
    assert "regression" in raw("ttr")["prompt"]["system_message"]
    assert "mixer" in raw("mm")["prompt"]["system_message"]


@pytest.mark.parametrize("fw", sorted(FRAMEWORKS))
def test_early_stopping_is_the_users_rule(fw, monkeypatch):
    """Rule (a) of the users' design: stop after 10 iterations without improvement of the best score.
    The keys are top-level in OpenEvolve 0.4.0 (Config.early_stopping_patience, read by process_parallel.py);
    harness analyze replays the same rule with the same numbers."""
    from harness.analysis.measures import CONVERGENCE_THRESHOLD, PATIENCE

    assert raw(fw)["early_stopping_patience"] == 10
    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    config = Config.from_yaml(str(CONFIGS[fw]))
    assert config.early_stopping_patience == PATIENCE == 10
    assert config.convergence_threshold == CONVERGENCE_THRESHOLD
    assert config.early_stopping_metric == "combined_score"
