"""Shared fixtures. Every test runs offline, on CPU, under the smoke profile, with its own cache and ledger (``harness
gpu-check`` runs some of them under smoke-cuda: ``security.PROFILE``)."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def smoke_env(tmp_path_factory):
    """Environment for anything that spawns the sandbox: the smoke profile (``security.PROFILE``), a session-wide
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
