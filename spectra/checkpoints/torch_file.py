"""The torch pickle backend: a ``torch.save``'d state dict read with ``weights_only=True`` (mmap for zip).

Also turns torch's unpickling errors into one-line InputErrors and unwraps ``{"state_dict": ...}`` nesting.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from hessian_spectra.checkpoints.base import (
    TensorMeta,
    _check_unchanged,
    _dtype_name,
    _file_size,
    _one_line,
    _torch_to_numpy,
)
from hessian_spectra.errors import InputError

if TYPE_CHECKING:
    import torch

NESTING_KEYS = ("state_dict", "model", "model_state_dict", "module")


class _TorchFile:
    """A torch.save'd state dict, opened with weights_only=True (and mmap for the zip format)."""

    def __init__(self, path: Path, notes: list[str]):
        self.path = path
        self.size = _file_size(path)
        self._mtime = path.stat().st_mtime_ns
        obj, self.mmapped = _torch_load(path)
        self.tensors = _unwrap_state_dict(obj, path, notes)
        self.metas = {
            k: TensorMeta(k, tuple(t.shape), _dtype_name(t.dtype), str(path)) for k, t in self.tensors.items()
        }
        if not self.mmapped:
            notes.append(f"{path.name}: legacy (non-zip) torch format, loaded into memory without mmap")

    def load_numpy(self, name: str) -> np.ndarray:
        return _torch_to_numpy(self.load(name))

    def load(self, name: str) -> torch.Tensor:
        if self.mmapped:
            _check_unchanged(self.path, self.size, self._mtime)
        try:
            return self.tensors[name].clone()
        except Exception as exc:
            raise InputError(self.path, f"could not read tensor '{name}': {_one_line(exc)}") from None

    def close(self) -> None:
        self.tensors = {}


def _torch_load(path: Path) -> tuple[Any, bool]:
    """``torch.load`` with weights_only=True; mmap for the zip format. Errors become InputError."""
    import torch

    try:
        is_zip = zipfile.is_zipfile(path)
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise InputError(path, f"cannot read file: {exc.strerror or exc}") from None
    if not magic:
        raise InputError(path, "empty file (0 bytes)")
    try:
        if is_zip:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True), True
        if magic[:2] == b"PK":
            raise InputError(
                path, "truncated or corrupt zip archive (PyTorch checkpoint): central directory missing"
            )
        return torch.load(path, map_location="cpu", weights_only=True), False
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, _explain_torch_error(exc, is_zip)) from None


def _explain_torch_error(exc: Exception, is_zip: bool) -> str:
    text = str(exc)
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if m or "Unsupported class" in text:
        what = f" (it references {m.group(1)})" if m else ""
        return (
            f"refused: loading this pickle would execute code{what}; weights_only=True is enforced. "
            "Save model.state_dict() or convert to safetensors instead"
        )
    if isinstance(exc, EOFError) or "Ran out of input" in text:
        return "truncated PyTorch checkpoint (unexpected end of file)"
    if "zip archive" in text or "PytorchStreamReader" in text or "miniz" in text:
        return "truncated or corrupt zip archive (PyTorch checkpoint): " + _one_line(exc).split(". ")[0]
    if not is_zip:
        return "not a PyTorch checkpoint or a corrupt one (unpickling failed)"
    return f"corrupt PyTorch checkpoint: {_one_line(exc)}"


def _unwrap_state_dict(obj: Any, path: Path, notes: list[str]) -> dict[str, torch.Tensor]:
    """Accept a flat {name: tensor} dict, or one nested under a common key; ignore non-tensors."""
    import torch

    if not isinstance(obj, dict):
        if isinstance(obj, torch.Tensor):
            raise InputError(path, "the file holds a single tensor, not a state dict of named tensors")
        raise InputError(path, f"not a state dict: the file holds a {type(obj).__name__}")
    if not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in NESTING_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                others = [str(k) for k in obj if k != key]
                notes.append(
                    f"{path.name}: tensors taken from the nested '{key}' entry"
                    + (f" (other top-level entries ignored: {', '.join(others[:6])})" if others else "")
                )
                obj = inner
                break
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    skipped = len(obj) - len(tensors)
    if skipped and tensors:
        notes.append(f"{path.name}: {skipped} non-tensor entries ignored")
    return tensors
