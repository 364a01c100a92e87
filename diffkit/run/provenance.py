"""What produced a result: library versions, machine facts and JSON-safe configurations."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from typing import Any

import torch


def versions() -> dict[str, str]:
    """Versions of diffkit, its numerical dependencies and Python."""
    import pluggy
    import torchdiffeq
    import torchsde

    import diffkit

    return {
        "diffkit": diffkit.__version__,
        "torch": torch.__version__,
        "torchdiffeq": getattr(torchdiffeq, "__version__", "?"),
        "torchsde": getattr(torchsde, "__version__", "?"),
        "pluggy": pluggy.__version__,
        "python": platform.python_version(),
    }


def machine(device: str) -> dict[str, Any]:
    """Facts about the machine a result came from: platform, CPU, threads and accelerator."""
    facts: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        facts["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return facts


def jsonable(value: Any) -> Any:
    """Mappings, sequences and scalars as JSON types (anything else as its `str`)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
