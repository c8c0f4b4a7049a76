"""Where and in which dtype a Hugging Face model is loaded: ``from_pretrained`` keyword arguments for
transformers 4.x and 5.x, a device or accelerate's device map, and the offload refusal's helpers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hessian_spectra.analyses.workloads.common import DEVICE_MAPS
from hessian_spectra.errors import InputError

__all__ = ["LOAD_DTYPES", "_placement_kwargs", "_has_accelerate", "_has_gpu_entries"]


#: ``--dtype`` names accepted when loading a HF model (None: the config's own dtype).
LOAD_DTYPES = ("float32", "float64", "bfloat16", "float16")


def _has_accelerate() -> bool:
    import importlib.util

    return importlib.util.find_spec("accelerate") is not None


def _has_gpu_entries(hf_map: Mapping[str, Any]) -> bool:
    """True when a device map puts something on a GPU (an int index or a ``cuda`` device)."""
    return any(isinstance(v, int) or str(v).startswith("cuda") for v in hf_map.values())


def _placement_kwargs(
    transformers: Any, *, device: str | None, device_map: str | None, dtype: str | None
) -> dict:
    """``from_pretrained`` keyword arguments for a dtype and a placement (transformers 4.x and 5.x).

    transformers >= 5 always initialises on the meta device and loads shard by shard (``low_cpu_mem_usage``
    is gone); 4.x is asked for it. The dtype keyword is ``dtype`` from 4.56 on, ``torch_dtype`` before.
    """
    import torch

    if dtype is not None and dtype not in LOAD_DTYPES:
        raise InputError("--dtype", f"must be one of {', '.join(LOAD_DTYPES)}, got {dtype!r}")
    if device_map is not None and device_map not in DEVICE_MAPS:
        raise InputError("--device-map", f"unknown device map {device_map!r}: use {' or '.join(DEVICE_MAPS)}")
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    kwargs: dict[str, Any] = {}
    kwargs["dtype" if (major, minor) >= (4, 56) else "torch_dtype"] = (
        "auto" if dtype is None else getattr(torch, dtype)
    )
    if major < 5:
        kwargs["low_cpu_mem_usage"] = True
    if device_map is not None:
        if not _has_accelerate():
            raise InputError("--device-map", "needs the 'accelerate' package (pip install accelerate)")
        kwargs["device_map"] = device_map
    elif device is not None and device != "cpu" and _has_accelerate():
        kwargs["device_map"] = {"": device}  # straight onto the GPU, one shard at a time
    return kwargs
