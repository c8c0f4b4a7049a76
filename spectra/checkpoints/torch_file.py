"""The torch pickle backend: a ``torch.save``'d checkpoint read with ``weights_only=True`` (mmap for zip;
the legacy non-zip format is read whole, still with ``weights_only=True``).

The weights are found wherever they sit (:mod:`hessian_spectra.checkpoints.state_dicts`), optimizer state is
listed apart (:mod:`hessian_spectra.checkpoints.optimizer_state`), and every tensor that is not a plain dense
tensor backed by its own storage (sparse, meta, quantized, nested, complex, or a view that addresses the
same stored element twice, such as a stride-0 ``expand``) is marked skipped with the reason, never
materialised. torch's unpickling errors become one-line InputErrors, without its advice to turn the
safety off.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from dataclasses import replace
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
    with_size_cap,
)
from hessian_spectra.checkpoints.limits import MAX_TENSORS_PER_FILE, max_tensor_bytes, show_name
from hessian_spectra.checkpoints.optimizer_state import optimizer_metas, second_moments
from hessian_spectra.checkpoints.state_dicts import find_weights
from hessian_spectra.errors import InputError

if TYPE_CHECKING:
    import torch


class _TorchFile:
    """A torch.save'd checkpoint: its weights (clean names -> tensors), their metadata and the optimizer
    state found beside them."""

    def __init__(self, path: Path, notes: list[str], *, entry: str | None = None):
        self.path = path
        self.size = _file_size(path)
        self._mtime = path.stat().st_mtime_ns
        obj, self.mmapped = _torch_load(path)
        found = find_weights(obj, path, entry=entry)
        if len(found.tensors) > MAX_TENSORS_PER_FILE:
            raise InputError(path, f"holds more than {MAX_TENSORS_PER_FILE} tensors (the limit)")
        notes.extend(found.notes)
        self.tensors = found.tensors
        self.optimizers = found.optimizers
        cap = max_tensor_bytes()
        self.metas = {}
        for name, t in self.tensors.items():
            key = found.keys[name]
            meta = _tensor_meta(name, t, str(path), None if key == name else key)
            self.metas[name] = with_size_cap(meta, cap)
        self.extras = optimizer_metas(self.optimizers, str(path))
        if not self.mmapped:
            notes.append(f"{path.name}: legacy (non-zip) torch format, loaded into memory without mmap")

    def optimizer_report(self) -> dict[str, Any] | None:
        """Adam's second moments per parameter (see :func:`second_moments`), or None."""
        return second_moments(self.optimizers, self.tensors) if self.optimizers else None

    def load_numpy(self, name: str) -> np.ndarray:
        return _torch_to_numpy(self.load(name))

    def load(self, name: str) -> torch.Tensor:
        if self.mmapped:
            _check_unchanged(self.path, self.size, self._mtime)
        try:
            return self.tensors[name].clone()
        except Exception as exc:
            raise InputError(
                self.path, f"could not read tensor '{show_name(name)}': {_one_line(exc)}"
            ) from None

    def close(self) -> None:
        self.tensors = {}
        self.optimizers = []


def _tensor_meta(name: str, t: Any, file: str, key: str | None) -> TensorMeta:
    """Metadata of one loaded tensor; ``skip`` says why it cannot be read as a dense matrix."""
    import torch

    dtype = _dtype_name(t.dtype)
    if t.is_nested:
        return TensorMeta(name, (), dtype, file, key=key, skip="nested (ragged) tensor: not a matrix")
    shape = tuple(int(s) for s in t.shape)
    meta = TensorMeta(name, shape, dtype, file, key=key)
    if t.layout != torch.strided:
        return replace(
            meta, skip=f"{str(t.layout).removeprefix('torch.')} tensor: sparse weights are not analysed"
        )
    if t.device.type == "meta":
        return replace(meta, skip="meta tensor: the file stores its shape only, no values")
    if t.is_quantized:
        return replace(meta, skip=f"quantized torch tensor ({dtype}): not analysed")
    if t.is_complex():
        return replace(meta, skip=f"complex dtype {dtype}: spectra of complex weights are not analysed")
    problem = _storage_problem(t)
    return meta if problem is None else replace(meta, skip=problem)


def _storage_problem(t: Any) -> str | None:
    """Why ``t``'s storage does not back it one element per element, or None.

    A view addresses the same stored element twice iff, with dims of size > 1 sorted by stride, some
    stride is smaller than the extent of the dims before it (a stride-0 ``expand`` is the extreme case);
    the view must also end inside its storage."""
    sizes, strides = t.shape, t.stride()
    numel = t.numel()
    if numel == 0:
        return None
    dims = sorted((st, sz) for sz, st in zip(sizes, strides, strict=True) if sz > 1)
    extent = 1
    for st, sz in dims:
        if st < extent:
            stored = 1 + sum(s * (z - 1) for s, z in dims)
            return (
                f"self-overlapping view (a stride-0 expand or overlapping strides): {numel} elements from at "
                f"most {stored} stored ones; not materialised"
            )
        extent = st * (sz - 1) + extent
    needed = t.storage_offset() + sum(st * (sz - 1) for st, sz in dims) + 1
    stored = t.untyped_storage().nbytes() // max(1, t.element_size())
    if needed > stored:
        return f"view needs {needed} stored elements, its storage holds {stored}"
    return None


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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol and sparse-invariant chatter
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


_REFUSED = (
    "refused: loading this pickle would execute code{what}; weights_only=True is enforced and nothing from "
    "the file was run. Save model.state_dict() or convert to safetensors instead"
)


def _explain_torch_error(exc: Exception, is_zip: bool) -> str:
    """One line for a failed ``torch.load``, never repeating torch's advice to retry with weights_only=False."""
    text = str(exc)
    m = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", text)
    if m or "Unsupported class" in text:
        return _REFUSED.format(what=f" (it references {m.group(1)})" if m else "")
    if "Weights only load failed" in text or "weights_only" in text:
        op = re.search(r"Unsupported operand (\d+)", text)
        return _REFUSED.format(what=f" (pickle opcode {op.group(1)} is not allowed)" if op else "")
    if isinstance(exc, EOFError) or "Ran out of input" in text:
        return "truncated PyTorch checkpoint (unexpected end of file)"
    if "zip archive" in text or "PytorchStreamReader" in text or "miniz" in text:
        return "truncated or corrupt zip archive (PyTorch checkpoint): " + _one_line(exc).split(". ")[0]
    if not is_zip:
        return "not a PyTorch checkpoint or a corrupt one (unpickling failed)"
    return f"corrupt PyTorch checkpoint: {_one_line(exc)}"
