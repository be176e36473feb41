"""The fingerprint: what produced a number. Results with different fingerprint ids are never ranked together.

The id covers the hardware, the software, the budget (profile and objective), the data and the
tokenizer, and the harness's own code. It leaves out the candidate and the seed, which are recorded
beside it: they are what is being compared.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

HARNESS_DIR = Path(__file__).resolve().parent
# The modules whose code can change an evaluation's verdict or numbers: the frozen model, the data, the training,
# the gates, the scoring, the budgets and the evaluator's decisions. Not the ledger, the slots or the tools around
# the loop (analysis, validation, proposer, benchmarks): editing those never invalidates a cached baseline.
RESULT_MODULES = ("checks", "data", "evaluate", "executor", "fingerprint", "flops", "frameworks", "hardware", "loader",
                  "objective", "policy", "profiles", "program", "reasons", "sandbox", "scaffold", "scoring", "train")


def harness_code_hash() -> str:
    """Hash of the modules that can change a result (``RESULT_MODULES``): a change to the scaffold, the recipe or
    the gate changes it."""
    digest = hashlib.sha256()
    for name in sorted(RESULT_MODULES):
        path = HARNESS_DIR / f"{name}.py"
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def environment_fingerprint(profile, data, hardware_info: dict) -> dict:
    """``hardware_info``: ``harness.hardware.hardware(profile.device)``, read where the evaluation runs."""
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
