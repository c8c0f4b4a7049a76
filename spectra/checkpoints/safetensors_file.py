"""The safetensors backend: header parsing and validation, and reading one tensor's byte range.

Numpy-only (torch is imported just for :meth:`_SafetensorsFile.load` and exotic dtypes), which is what lets
the weights probe analyse safetensors checkpoints without importing torch.
"""

from __future__ import annotations

import math
import struct
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from hessian_spectra.checkpoints.base import (
    TensorMeta,
    _check_unchanged,
    _file_size,
    _one_line,
    _torch_to_numpy,
    with_size_cap,
)
from hessian_spectra.checkpoints.limits import (
    MAX_HEADER_BYTES,
    MAX_HEADER_DEPTH,
    MAX_NDIM,
    MAX_TENSORS_PER_FILE,
    exact_int,
    human_bytes,
    loads_limited,
    max_tensor_bytes,
    show_name,
)
from hessian_spectra.errors import InputError

if TYPE_CHECKING:
    import torch

# safetensors header dtype code -> (torch dtype name, bytes per element)
_ST_DTYPES: dict[str, tuple[str, float]] = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "F8_E8M0": ("float8_e8m0fnu", 1),
    "F8_E4M3FNUZ": ("float8_e4m3fnuz", 1),
    "F8_E5M2FNUZ": ("float8_e5m2fnuz", 1),
    "F4": ("float4_e2m1fn_x2", 0.5),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U64": ("uint64", 8),
    "U32": ("uint32", 4),
    "U16": ("uint16", 2),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
    "C64": ("complex64", 8),
}
# safetensors dtype code -> numpy dtype the bytes are read as (bf16 as raw uint16 bits, see _read_numpy)
_ST_NUMPY: dict[str, str] = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}  # fmt: skip


class _SafetensorsFile:
    """One safetensors file: header parsed and validated at open; each tensor read with one ``readinto``.

    Reading the byte range into a fresh tensor (instead of touching a memory map) keeps resident memory
    at about one tensor and turns a file truncated after opening into an InputError, not a SIGBUS.
    Packed/unusual dtypes (F4, F6) and big-endian hosts fall back to ``safe_open().get_tensor``.
    """

    torch_free = True

    def __init__(self, path: Path):
        self.path = path
        self.size = _file_size(path)
        self._mtime = path.stat().st_mtime_ns
        self.metas, self.metadata, self._spans = _read_safetensors_header(path, self.size)
        cap = max_tensor_bytes()
        self.metas = {k: with_size_cap(m, cap) for k, m in self.metas.items()}
        self._open("numpy")  # safetensors' own checks (coverage, overlaps, dtypes) also run at open time

    def _open(self, framework: str = "pt"):
        from safetensors import safe_open

        try:
            return safe_open(str(self.path), framework=framework, device="cpu")
        except Exception as exc:  # SafetensorError / OSError
            raise InputError(self.path, f"corrupt safetensors file: {_one_line(exc)}") from None

    def _read_bytes(self, name: str, buf: Any) -> None:
        """Read tensor ``name``'s byte range into the writable buffer ``buf`` (InputError if short)."""
        start, end, _ = self._spans[name]
        with open(self.path, "rb") as fh:
            fh.seek(start)
            got = fh.readinto(buf)
        if got != end - start:
            raise InputError(
                self.path, f"truncated: tensor '{show_name(name)}' ends at byte {end}, read {start + got}"
            )

    def load_numpy(self, name: str) -> np.ndarray:
        """Tensor ``name`` as a numpy array without importing torch; bf16/f16 become float32 exactly.

        bf16 is the top half of a float32, so its uint16 bits shifted left by 16 are the float32 bits.
        Dtypes numpy cannot represent (float8, F4, C64) and big-endian hosts fall back to :meth:`load`.
        """
        _check_unchanged(self.path, self.size, self._mtime)
        start, end, code = self._spans[name]
        np_code = _ST_NUMPY.get(code)
        if np_code is None or sys.byteorder != "little":
            return _torch_to_numpy(self.load(name))
        try:
            raw = np.empty(end - start, dtype=np.uint8)
            self._read_bytes(name, memoryview(raw))
            arr = raw.view(np_code).reshape(self.metas[name].shape)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(
                self.path, f"could not read tensor '{show_name(name)}': {_one_line(exc)}"
            ) from None
        if code == "BF16":
            return (arr.astype(np.uint32) << 16).view(np.float32)
        if code == "F16":
            return arr.astype(np.float32)
        return arr

    def load(self, name: str) -> torch.Tensor:
        import torch

        _check_unchanged(self.path, self.size, self._mtime)
        start, end, code = self._spans[name]
        meta = self.metas[name]
        dtype = getattr(torch, meta.dtype, None) if code in _ST_DTYPES and code != "F4" else None
        try:
            if dtype is None or sys.byteorder != "little":
                return self._open().get_tensor(name)
            buf = torch.empty(end - start, dtype=torch.uint8)
            self._read_bytes(name, memoryview(buf.numpy()))
            return buf.view(dtype).reshape(meta.shape)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(
                self.path, f"could not read tensor '{show_name(name)}': {_one_line(exc)}"
            ) from None

    def close(self) -> None:
        """Nothing stays open between reads."""


def _read_safetensors_header(
    path: Path, size: int
) -> tuple[dict[str, TensorMeta], dict, dict[str, tuple[int, int, str]]]:
    """Parse and validate the JSON header: dtypes, shapes, byte ranges inside the file.

    Every limit is checked before the header is allocated or parsed (length within the file and under
    :data:`MAX_HEADER_BYTES`, entry count, nesting depth), and every number must be an exact JSON integer
    (no floats, bools, ``1e400``). Returns metas, the ``__metadata__`` dict and, per tensor, (absolute start,
    end, dtype code)."""
    if size < 8:
        raise InputError(path, f"not a safetensors file: {size} bytes is too short to hold a header")
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > size - 8:
                raise InputError(
                    path,
                    "not a safetensors file (or a truncated one): the header length in its first 8 bytes "
                    f"is larger than the file ({size} bytes)",
                )
            if n > MAX_HEADER_BYTES:
                raise InputError(
                    path,
                    f"safetensors header of {human_bytes(n)} is above the {human_bytes(MAX_HEADER_BYTES)} limit",
                )
            raw = fh.read(n)
    except OSError as exc:
        raise InputError(path, f"cannot read file: {exc.strerror or exc}") from None
    if len(raw) != n:
        raise InputError(path, "truncated safetensors header (the file changed while it was read)")
    if not raw.lstrip(b" ").startswith(b"{"):
        raise InputError(path, "not a safetensors file: the header is not a JSON object")
    if raw.count(b'"data_offsets"') > MAX_TENSORS_PER_FILE:
        raise InputError(
            path, f"safetensors header lists more than {MAX_TENSORS_PER_FILE} tensors (the limit)"
        )
    header = loads_limited(raw, path, "safetensors header", max_depth=MAX_HEADER_DEPTH)
    if not isinstance(header, dict):
        raise InputError(path, "corrupt safetensors header (not a JSON object)")
    if len(header) > MAX_TENSORS_PER_FILE + 1:
        raise InputError(
            path, f"safetensors header lists more than {MAX_TENSORS_PER_FILE} tensors (the limit)"
        )
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise InputError(path, "corrupt safetensors header: '__metadata__' is not an object")
    data_size = size - 8 - n
    metas: dict[str, TensorMeta] = {}
    spans: dict[str, tuple[int, int, str]] = {}
    for name, info in header.items():
        code, shape, begin, end = _header_entry(path, name, info, data_size)
        torch_name = _ST_DTYPES[code][0] if code in _ST_DTYPES else f"unknown:{code}"
        metas[name] = TensorMeta(name, shape, torch_name, str(path))
        spans[name] = (8 + n + begin, 8 + n + end, code)
    return metas, metadata, spans


def _header_entry(path: Path, name: str, info: Any, data_size: int) -> tuple[str, tuple[int, ...], int, int]:
    """One header entry checked: string dtype, exact non-negative integer dims and offsets, the offsets
    span equal to the dtype/shape byte size (unknown dtypes: any span), the span inside the data."""
    shown = show_name(name)
    if not isinstance(info, dict) or not isinstance(info.get("dtype"), str):
        raise InputError(path, f"corrupt safetensors header entry for '{shown}'")
    code, shape, offsets = info["dtype"], info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        raise InputError(
            path,
            f"corrupt safetensors header: shape of '{shown}' is not a list of at most {MAX_NDIM} integers",
        )
    dims = [exact_int(s) for s in shape]
    if any(d is None for d in dims):
        raise InputError(
            path,
            f"corrupt safetensors header: shape of '{shown}' holds a value that is not a non-negative integer",
        )
    if not isinstance(offsets, list) or len(offsets) != 2:
        raise InputError(path, f"corrupt safetensors header: data_offsets of '{shown}' is not [begin, end]")
    begin, end = exact_int(offsets[0]), exact_int(offsets[1])
    if begin is None or end is None or end < begin:
        raise InputError(
            path, f"corrupt safetensors header: data_offsets of '{shown}' are not integers 0 <= begin <= end"
        )
    if end > data_size:
        raise InputError(
            path,
            f"truncated safetensors file: tensor '{shown}' needs {end} data bytes, the file has {data_size}",
        )
    itemsize = _ST_DTYPES.get(code, (None, None))[1]
    if itemsize is not None and end - begin != math.ceil(math.prod(dims) * itemsize):
        raise InputError(
            path, f"corrupt safetensors header: byte range of '{shown}' does not match its shape"
        )
    return code, tuple(dims), begin, end
