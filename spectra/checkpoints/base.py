"""What every checkpoint backend shares: the metadata records it produces and its file-safety helpers.

Kept apart from the backends (safetensors, torch pickle, live module) so each imports one small module and
none imports another; :mod:`hessian_spectra.checkpoints.reader` assembles them into a Checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from hessian_spectra.errors import InputError

if TYPE_CHECKING:  # torch is imported lazily: safetensors read as numpy (load_numpy) never need it
    import torch

__all__ = ["FileInfo", "TensorMeta"]


@dataclass(frozen=True)
class FileInfo:
    """One file the checkpoint was read from (provenance for reports)."""

    path: str
    size_bytes: int
    format: str  # "safetensors" | "torch" | "module"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TensorMeta:
    """Name, shape and dtype of one stored tensor, known without reading its data."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # torch dtype name without the "torch." prefix, e.g. "float32", "bfloat16"
    file: str | None  # file holding it; None for a live module

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _torch_to_numpy(t: torch.Tensor) -> np.ndarray:
    """A loaded torch tensor as numpy; low-precision floats go to float32 (exact), others as stored."""
    import torch

    if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    return t.numpy(force=True)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise InputError(path, f"cannot read file: {exc.strerror or exc}") from None


def _check_unchanged(path: Path, size: int, mtime: int) -> None:
    """Refuse to touch a memory map whose file shrank or changed (reading it could SIGBUS)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise InputError(path, f"file disappeared since it was opened: {exc.strerror or exc}") from None
    if st.st_size != size or st.st_mtime_ns != mtime:
        raise InputError(
            path, f"file changed on disk since it was opened (size {size} -> {st.st_size} bytes)"
        )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "") or type(exc).__name__
