"""The hardware an evaluation runs on, read where it runs (the sandbox): on CUDA this initialises the driver."""

from __future__ import annotations

import platform
from pathlib import Path


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
