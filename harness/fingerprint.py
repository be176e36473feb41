"""The fingerprint: what produced a number. Results with different fingerprint ids are never ranked together.

The id covers the hardware, the software, the budget (profile and objective), the data and the
tokenizer, and the harness's own code. It leaves out the candidate and the seed, which are recorded
beside it: they are what is being compared.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

HARNESS_DIR = Path(__file__).resolve().parent


def harness_code_hash() -> str:
    """Hash of every module of the package: a change to the scaffold, the recipe or the gate changes it."""
    digest = hashlib.sha256()
    for path in sorted(HARNESS_DIR.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: str) -> dict:
    """Call only where torch may touch the device (the sandbox): on CUDA it initialises the driver."""
    import torch

    info = {"device": device, "cpu": cpu_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_mib"] = props.total_memory // (1 << 20)
        info["cuda_capability"] = f"{props.major}.{props.minor}"
    return info


def environment_fingerprint(profile, data) -> dict:
    fp = {
        "hardware": hardware(profile.device),
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
