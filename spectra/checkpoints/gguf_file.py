"""The GGUF backend (llama.cpp, Ollama): tensors memory-mapped by the ``gguf`` package and dequantized one
at a time (``pip install hessian-spectra[gguf]``).

GGUF stores dimensions fastest-first (``ne[0]`` is the row length); the ``gguf`` reader reverses them, so a
matrix arrives as (rows, cols) like PyTorch's. F32/F16/BF16/F64 tensors are read as stored (F16/BF16 exactly
as float32 by :meth:`load_numpy`, as in safetensors); quantized tensors (Q8_0, Q4_0, K-quants, ...) are
dequantized to float32 by ``gguf.quants.dequantize`` and their type is kept in the inventory
(``TensorMeta.storage``). Names and the Q/K row permutation: :mod:`hessian_spectra.checkpoints.gguf_names`.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from hessian_spectra.checkpoints.base import (
    TensorMeta,
    _check_unchanged,
    _file_size,
    _one_line,
    with_size_cap,
)
from hessian_spectra.checkpoints.gguf_names import gguf_config, hf_name, qk_permutation, unpermute_rows
from hessian_spectra.checkpoints.limits import MAX_NDIM, MAX_TENSORS_PER_FILE, max_tensor_bytes, show_name
from hessian_spectra.errors import InputError

if TYPE_CHECKING:
    import torch

GGUF_SUFFIXES = (".gguf",)
_MAX_KV = 1_000_000
# GGUF types read as stored -> (torch dtype name, numpy dtype of the stored values)
_PLAIN = {"F32": ("float32", "<f4"), "F16": ("float16", "<f2"), "F64": ("float64", "<f8"), "BF16": ("bfloat16", "<u2"),
          "I8": ("int8", "i1"), "I16": ("int16", "<i2"), "I32": ("int32", "<i4"), "I64": ("int64", "<i8")}  # fmt: skip


def _import_gguf():
    try:
        import gguf
    except ImportError:
        raise InputError(
            None, "reading .gguf files needs the 'gguf' package: pip install 'hessian-spectra[gguf]'"
        ) from None
    return gguf


def _check_counts(path: Path, size: int) -> None:
    """Magic, version and the tensor/metadata counts, checked before the ``gguf`` reader walks them."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(24)
    except OSError as exc:
        raise InputError(path, f"cannot read file: {exc.strerror or exc}") from None
    if len(head) < 24 or head[:4] != b"GGUF":
        raise InputError(path, "not a GGUF file (it does not start with the GGUF magic bytes)")
    n_tensors, n_kv = struct.unpack("<QQ", head[8:24])
    if n_tensors > MAX_TENSORS_PER_FILE or n_tensors * 24 > size:
        raise InputError(
            path,
            f"corrupt GGUF header: it declares more tensors than the file can hold or than the limit ({MAX_TENSORS_PER_FILE})",
        )
    if n_kv > _MAX_KV or n_kv * 12 > size:
        raise InputError(
            path, "corrupt GGUF header: it declares more metadata entries than the file can hold"
        )


class _GGUFFile:
    """One GGUF file: metadata and tensor layout parsed at open; each tensor dequantized when loaded."""

    torch_free = True

    def __init__(self, path: Path, notes: list[str]):
        self.path = path
        self.size = _file_size(path)
        self._mtime = path.stat().st_mtime_ns
        _check_counts(path, self.size)
        gguf = _import_gguf()
        try:
            self._reader = gguf.GGUFReader(path, "r")
            fields = {
                k: f.contents()
                for k, f in self._reader.fields.items()
                if not k.startswith(("tokenizer.", "GGUF."))
            }
        except Exception as exc:  # the reader raises ValueError/KeyError/IndexError on corrupt files
            raise InputError(path, f"corrupt GGUF file: {_one_line(exc)}") from None
        arch = fields.get("general.architecture")
        self.arch = arch if isinstance(arch, str) else None
        gguf_names = {t.name for t in self._reader.tensors}
        self.config = gguf_config(self.arch, fields, gguf_names)
        self.metas: dict[str, TensorMeta] = {}
        self._tensors: dict[str, tuple[Any, int | None]] = {}
        cap, renamed, permuted = max_tensor_bytes(), 0, 0
        for t in self._reader.tensors:
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            if len(shape) > MAX_NDIM:
                raise InputError(
                    path, f"corrupt GGUF file: tensor '{show_name(t.name)}' has {len(shape)} dimensions"
                )
            qtype = t.tensor_type.name
            dtype = _PLAIN[qtype][0] if qtype in _PLAIN else "float32"
            name = hf_name(self.arch, t.name) or t.name
            renamed += name != t.name
            if name in self.metas:
                raise InputError(path, f"corrupt GGUF file: two tensors map to the name '{show_name(name)}'")
            heads = qk_permutation(self.arch, t.name, self.config)
            if heads is not None and (not shape or shape[0] % (2 * heads)):
                raise InputError(
                    path,
                    f"tensor '{show_name(t.name)}': {shape[0] if shape else 0} rows do not split into {heads} heads of row pairs",
                )
            permuted += heads is not None
            meta = TensorMeta(
                name, shape, dtype, str(path), key=t.name if name != t.name else None, storage=qtype
            )
            self.metas[name] = with_size_cap(meta, cap)
            self._tensors[name] = (t, heads)
        if renamed:
            notes.append(
                f"{path.name}: llama.cpp names of the '{self.arch}' architecture mapped to Hugging Face names ({renamed} tensors; originals in the inventory)"
            )
        elif self.arch:
            notes.append(
                f"{path.name}: architecture '{self.arch}': llama.cpp tensor names kept (no HF name map for it)"
            )
        if permuted:
            notes.append(
                f"{path.name}: llama.cpp's Q/K row permutation undone on {permuted} tensors (per-head rows in HF order)"
            )
        quant = sorted({m.storage for m in self.metas.values() if m.storage not in _PLAIN})
        if quant:
            notes.append(
                f"{path.name}: quantized tensors ({', '.join(quant)}) dequantized to float32, one at a time"
            )

    def load_numpy(self, name: str) -> np.ndarray:
        """Tensor ``name`` dequantized (float32; F16/BF16 exactly as float32; F64/integers as stored), rows in
        HF order. A fresh array: nothing keeps the memory map alive."""
        _check_unchanged(self.path, self.size, self._mtime)
        t, heads = self._tensors[name]
        meta = self.metas[name]
        if meta.skip:
            raise InputError(self.path, f"tensor '{show_name(name)}' cannot be read: {meta.skip}")
        try:
            arr = self._dequantize(t, meta)
            if heads is not None:
                arr = np.ascontiguousarray(unpermute_rows(arr, heads))
        except InputError:
            raise
        except Exception as exc:
            raise InputError(
                self.path, f"could not read tensor '{show_name(t.name)}': {_one_line(exc)}"
            ) from None
        return arr

    def _dequantize(self, t: Any, meta: TensorMeta) -> np.ndarray:
        qtype = meta.storage
        raw = np.asarray(t.data)
        if qtype in _PLAIN:
            arr = np.array(raw.view(_PLAIN[qtype][1]), copy=True).reshape(meta.shape)
            if qtype == "BF16":
                return (arr.astype(np.uint32) << 16).view(np.float32)
            return arr.astype(np.float32) if qtype == "F16" else arr
        from gguf.quants import dequantize

        return np.ascontiguousarray(dequantize(raw, t.tensor_type), dtype=np.float32).reshape(meta.shape)

    def load(self, name: str) -> torch.Tensor:
        """As :meth:`load_numpy`, as a torch tensor in the stored dtype (F16 stays float16, BF16 bfloat16)."""
        import torch

        arr = self.load_numpy(name)
        dtype = self.metas[name].dtype
        out = torch.from_numpy(arr)
        return out.to(getattr(torch, dtype)) if dtype in ("float16", "bfloat16") else out

    def close(self) -> None:
        self._reader = None
        self._tensors = {}
