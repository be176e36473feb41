"""Shared fixtures. Every test runs offline, on CPU, under the smoke-short profile, with its own cache and ledger
(``harness gpu-check`` runs some of them under smoke-cuda: ``security.PROFILE``)."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def smoke_env(tmp_path_factory):
    """Environment for anything that spawns the sandbox: the smoke-short profile (``security.PROFILE``), a session-wide
    data cache (the synthetic corpus is tokenised once), and a fresh ledger. Restores the environment afterwards."""
    from security import PROFILE

    root = tmp_path_factory.mktemp("harness")
    values = {
        "HARNESS_PROFILE": PROFILE,
        "HARNESS_CACHE": str(root / "cache"),
        "HARNESS_LEDGER": str(root / "ledger.sqlite"),
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
    }
    saved = {k: os.environ.get(k) for k in values}
    for key in ("HARNESS_OBJECTIVE", "HARNESS_DATA"):
        saved[key] = os.environ.pop(key, None)
    os.environ.update(values)
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# The files that take longest on a 2-core machine, longest first (seconds per file in the suite, measured: the stock
# loop 330-370, the campaign killed and resumed 50-350, Ray 300-330, the evaluator 300, gpu-check's dry run
# 130-220, validate 150-190). Two workers finish together only if these start first: by default pytest-xdist hands
# out the files with the most tests first, and a long file with few tests started last and ran alone for minutes.
LONGEST_FIRST = ("test_openevolve_loop.py", "test_campaign.py", "test_ray.py", "test_evaluator.py",
                 "test_gpu_check.py", "test_validate.py", "test_proposer.py", "test_confinement.py")


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: keep the order below, not its own
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order
