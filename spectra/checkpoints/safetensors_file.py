"""The safetensors backend: header parsing and validation, and reading one tensor's byte range.

Numpy-only (torch is imported just for :meth:`_SafetensorsFile.load` and exotic dtypes), which is what lets
the weights probe analyse safetensors checkpoints without importing torch.
"""

from __future__ import annotations

import json
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
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors spec caps the header at 100 MB


class _SafetensorsFile:
    """One safetensors file: header parsed and validated at open; each tensor read with one ``readinto``.

    Reading the byte range into a fresh tensor (instead of touching a memory map) keeps resident memory
    at about one tensor and turns a file truncated after opening into an InputError, not a SIGBUS.
    Packed/unusual dtypes (F4, F6) and big-endian hosts fall back to ``safe_open().get_tensor``.
    """

    def __init__(self, path: Path):
        self.path = path
        self.size = _file_size(path)
        self._mtime = path.stat().st_mtime_ns
        self.metas, self.metadata, self._spans = _read_safetensors_header(path, self.size)
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
            raise InputError(self.path, f"truncated: tensor '{name}' ends at byte {end}, read {start + got}")

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
            raise InputError(self.path, f"could not read tensor '{name}': {_one_line(exc)}") from None
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
            raise InputError(self.path, f"could not read tensor '{name}': {_one_line(exc)}") from None

    def close(self) -> None:
        """Nothing stays open between reads."""


def _read_safetensors_header(
    path: Path, size: int
) -> tuple[dict[str, TensorMeta], dict, dict[str, tuple[int, int, str]]]:
    """Parse and validate the JSON header: dtypes, shapes, byte ranges inside the file.

    Returns metas, the ``__metadata__`` dict and, per tensor, (absolute start, end, dtype code)."""
    if size < 8:
        raise InputError(
            path, f"truncated or corrupt safetensors file ({size} bytes, too short for a header)"
        )
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            raw = fh.read(n) if n <= _MAX_HEADER and 8 + n <= size else None
    except OSError as exc:
        raise InputError(path, f"cannot read file: {exc.strerror or exc}") from None
    if raw is None:
        raise InputError(
            path, f"truncated or corrupt safetensors header (declared header length {n}, file size {size})"
        )
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InputError(path, "corrupt safetensors header (not valid UTF-8 JSON)") from None
    if not isinstance(header, dict):
        raise InputError(path, "corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_size = size - 8 - n
    metas: dict[str, TensorMeta] = {}
    spans: dict[str, tuple[int, int, str]] = {}
    for name, info in header.items():
        try:
            code, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            shape = tuple(int(s) for s in shape)
            begin, end = int(begin), int(end)
        except (KeyError, TypeError, ValueError):
            raise InputError(path, f"corrupt safetensors header entry for '{name}'") from None
        # an unknown dtype code is kept (and later skipped as non-float) rather than failing the file
        torch_name, itemsize = _ST_DTYPES.get(str(code), (f"unknown:{code}", None))
        sized_ok = itemsize is None or end - begin == math.ceil(math.prod(shape) * itemsize)
        if any(s < 0 for s in shape) or not sized_ok or begin < 0 or end < begin:
            raise InputError(
                path, f"corrupt safetensors header: byte range of '{name}' does not match its shape"
            )
        if end > data_size:
            raise InputError(
                path,
                f"truncated safetensors file: tensor '{name}' needs {end} data bytes, the file has {data_size}",
            )
        metas[name] = TensorMeta(name, shape, torch_name, str(path))
        spans[name] = (8 + n + begin, 8 + n + end, str(code))
    return metas, metadata, spans
