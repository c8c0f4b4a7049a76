"""Device choice for the probes and the CLI: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, with one-line errors.

``auto`` is CUDA when torch sees a GPU, else the CPU. The check is torch-free when the machine has no
NVIDIA driver at all (no ``/proc/driver/nvidia``, no ``/dev/nvidia*`` or WSL ``/dev/dxg``, or
``CUDA_VISIBLE_DEVICES`` empty): then ``auto`` is the CPU without importing torch, which keeps
``spectra weights`` on safetensors torch-free (torch's import alone is seconds). Anywhere else torch
decides (``torch.cuda.is_available()``).
"""

from __future__ import annotations

import glob
import os
import re
import sys

from hessian_spectra.errors import InputError

__all__ = ["DEVICE_CHOICES", "cuda_may_exist", "parse_device", "resolve_device"]

#: What ``--device`` accepts, as the error messages say it.
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_PATTERN = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")
#: Files whose presence means an NVIDIA driver (Linux, WSL) and device nodes of NVIDIA GPUs.
_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/dxg")
_DEVICE_NODES = "/dev/nvidia[0-9]*"


def cuda_may_exist() -> bool:
    """False only when this machine certainly has no usable NVIDIA GPU (decided without importing torch).

    True means "ask torch": an NVIDIA driver or device node is present and ``CUDA_VISIBLE_DEVICES`` does
    not hide every GPU. When torch is already imported its own answer is returned.
    """
    if "torch" in sys.modules:
        return bool(sys.modules["torch"].cuda.is_available())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return any(os.path.exists(p) for p in _DRIVER_FILES) or bool(glob.glob(_DEVICE_NODES))


def parse_device(spec: str, flag: str = "--device") -> tuple[str, int | None]:
    """``(kind, index)`` of a device string (``"cuda:1"`` -> ``("cuda", 1)``); InputError naming ``flag``."""
    m = _PATTERN.match(str(spec).strip().lower())
    if m is None or (m.group(1) in ("auto", "cpu") and m.group(2) is not None):
        raise InputError(flag, f"unknown device {spec!r}: use {DEVICE_CHOICES}")
    return m.group(1), None if m.group(2) is None else int(m.group(2))


def resolve_device(spec: str = "auto", flag: str = "--device") -> str:
    """The device to run on as a torch device string (``"cpu"``, ``"cuda:0"``...), checked to exist.

    ``auto``: ``cuda:0`` when a GPU is usable (``cuda:LOCAL_RANK`` under torchrun), else ``cpu``; ``cuda``:
    the same GPU, an error when there is none; ``cuda:N``: that GPU, an error when it does not exist.
    Every error is an :class:`InputError` naming ``flag`` (the CLI prints one line and exits 2).
    """
    kind, index = parse_device(spec, flag)
    if kind == "cpu" or (kind == "auto" and not cuda_may_exist()):
        return "cpu"
    import torch

    available = torch.cuda.is_available()
    if kind == "auto" and not available:
        return "cpu"
    if not available:
        raise InputError(
            flag,
            f"{spec!r} asked for a CUDA GPU but torch.cuda.is_available() is False (torch {torch.__version__}); "
            "use --device cpu or auto",
        )
    count = torch.cuda.device_count()
    if index is None:
        index = int(os.environ.get("LOCAL_RANK", "0")) % max(count, 1)
    if index >= count:
        raise InputError(
            flag, f"{spec!r} does not exist: {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})"
        )
    return f"cuda:{index}"
