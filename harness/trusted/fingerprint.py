"""The fingerprint: what produced a number. Results with different fingerprint ids are never ranked together.

The id covers the hardware, the software, the budget (profile and objective), the data and the
tokenizer, and the harness's own code. It leaves out the candidate and the seed, which are recorded
beside it: they are what is being compared.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

HARNESS_DIR = Path(__file__).resolve().parents[1]
# What can change an evaluation's verdict or numbers: everything that runs in the sandbox (the frozen model, the
# training, the dynamic gate, the FLOP audit), the data pipeline, the trusted scorer, and on the trusted side the
# static gate, the scoring, the budgets, the limits and the evaluator's decisions. Not the ledger, the slots or the tools around the loop
# (analysis, validation, proposer, diagnostics): editing those never invalidates a cached baseline.
TRUSTED_RESULT_MODULES = ("evaluate", "executor", "fingerprint", "frameworks", "policy", "profiles", "program",
                          "reasons", "scoring")


def result_files() -> list[str]:
    """The files ``harness_code_hash`` covers, relative to the package: ``scaffold.py``, ``data.py``, every module
    of ``sandbox/`` and ``scorer/`` (a new one is covered without a change here) and ``TRUSTED_RESULT_MODULES``."""
    files = ["scaffold.py", "data.py"]
    for folder in ("sandbox", "scorer"):
        files += [p.relative_to(HARNESS_DIR).as_posix() for p in (HARNESS_DIR / folder).glob("*.py")]
    files += [f"trusted/{name}.py" for name in TRUSTED_RESULT_MODULES]
    return sorted(files)


def harness_code_hash() -> str:
    """Hash of ``result_files()``, names and bytes: a change to the scaffold, the recipe or the gate changes it."""
    digest = hashlib.sha256()
    for name in result_files():
        digest.update(name.encode())
        digest.update((HARNESS_DIR / name).read_bytes())
    return digest.hexdigest()[:16]


def environment_fingerprint(profile, data, hardware_info: dict) -> dict:
    """``hardware_info``: ``harness.sandbox.hardware.hardware(profile.device)``, read where the evaluation runs."""
    fp = {
        "hardware": hardware_info,
        "profile": profile.name,
        "profile_digest": profile.digest(),
        "objective": profile.objective,
        "data_source": profile.data_source,
        "data_hash": data.data_hash,
        "tokenizer_hash": data.tokenizer_hash,
        "harness_code_hash": harness_code_hash(),
        "train_seed": profile.train_seed,
    }
    fp["id"] = fingerprint_id(fp)
    return fp


def fingerprint_id(fp: dict) -> str:
    body = {k: v for k, v in fp.items() if k != "id"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def is_data_hash(value) -> bool:
    """Whether ``value`` has the form of a fingerprint's ``data_hash`` (``harness.data.text_hash``: 16 lowercase hex
    digits). The scorer opens the token cache entry it names: anything else (an absolute path, ``..``) would name a
    folder elsewhere."""
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{16}", value) is not None
