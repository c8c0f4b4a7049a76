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

__all__ = ["FileInfo", "TensorMeta", "natural_key"]


def natural_key(name: str) -> tuple:
    """Sort key putting ``layer.2`` before ``layer.10`` (digit runs compare as numbers)."""
    import re

    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p)


@dataclass(frozen=True)
class FileInfo:
    """One file the checkpoint was read from (provenance for reports)."""

    path: str
    size_bytes: int
    format: str  # "safetensors" | "torch" | "gguf" | "module"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TensorMeta:
    """Name, shape and dtype of one stored tensor, known without reading its data.

    ``key`` is where the tensor sits in the file when that differs from ``name`` (a nested entry such as
    ``model_state/module.fc.weight``, a llama.cpp name such as ``blk.0.attn_q.weight``); ``storage`` how it
    is stored when that is not ``dtype`` (a GGUF quantization type such as ``Q8_0``); ``skip`` why it
    cannot be read as a dense tensor (sparse, meta, self-overlapping view, above the size cap), or None.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str  # torch dtype name without the "torch." prefix, e.g. "float32", "bfloat16"
    file: str | None  # file holding it; None for a live module
    key: str | None = None
    storage: str | None = None
    skip: str | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


#: bytes per element of the dtype a tensor is loaded as (unknown dtypes: 8, the widest real dtype)
_ITEMSIZE = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2, "int8": 1,
    "uint64": 8, "uint32": 4, "uint16": 2, "uint8": 1, "bool": 1, "complex64": 8, "complex128": 16,
}  # fmt: skip


def with_size_cap(meta: TensorMeta, cap: int) -> TensorMeta:
    """``meta`` marked skipped when reading it would take more than ``cap`` bytes (the per-tensor cap)."""
    from dataclasses import replace

    from hessian_spectra.checkpoints.limits import human_bytes

    nbytes = meta.numel * _ITEMSIZE.get(meta.dtype, 8)
    if meta.skip is not None or nbytes <= cap:
        return meta
    return replace(
        meta,
        skip=f"reading it needs {human_bytes(nbytes)}, above the per-tensor cap of {human_bytes(cap)} "
        "(SPECTRA_MAX_TENSOR_BYTES)",
    )


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
    text = " ".join("".join(c if c.isprintable() or c.isspace() else repr(c)[1:-1] for c in str(exc)).split())
    return text[:300] + ("..." if len(text) > 300 else "") or type(exc).__name__
