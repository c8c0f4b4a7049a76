"""Provenance of a report: tool and library versions, platform, time and seed.

Shared by every report the tool writes (weights, Hessian, partition); reads versions from package
metadata so that recording them never imports torch.
"""

from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
from typing import Any

import numpy as np

__all__ = ["provenance"]


def provenance(seed: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Versions, platform, time and seed: what a reader needs to reproduce a report."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("hessian-spectra")
    except PackageNotFoundError:  # running from a checkout that was never installed
        own = "0+unknown"
    info: dict[str, Any] = {
        "tool": "hessian-spectra",
        "tool_version": own,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": _torch_version(),
        "numpy": np.__version__,
        "scipy": version("scipy"),
        "seed": seed,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # None when torch was never imported (the safetensors fast path does not need it)
        "torch_threads": sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None,
    }
    info.update(extra or {})
    return info


def _torch_version() -> str | None:
    """torch's version without importing it (package metadata), or None when it is not installed."""
    if "torch" in sys.modules:
        return sys.modules["torch"].__version__
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return None
