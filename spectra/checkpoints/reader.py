"""Lazy, read-only tensor source over every checkpoint form a user is likely to hand us.

Supported sources (``open_checkpoint``):

* a single ``.safetensors`` file;
* sharded safetensors: a ``model.safetensors.index.json`` file, or the folder holding it;
* a Hugging Face model folder: ``model.safetensors`` / its index, else ``pytorch_model.bin`` / its index,
  else a single weight file; ``config.json`` is parsed when present;
* a PyTorch state dict in ``.bin`` / ``.pt`` / ``.pth`` / ``.ckpt``, always read with
  ``torch.load(weights_only=True, map_location="cpu", mmap=True)`` (non-mmap only for the legacy
  non-zip format); ``{"state_dict": {...}}`` / ``{"model": {...}}`` nesting is unwrapped with a note;
* a live ``torch.nn.Module`` (its ``state_dict()``; the module is never modified and ``load`` returns
  copies).

Everything that can be validated without reading tensor data (headers, shard lists, byte ranges) is
checked when the checkpoint is opened, so a command fails before it writes anything. All problems are
reported as :class:`hessian_spectra.errors.InputError` naming the offending file.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from hessian_spectra.errors import InputError

if TYPE_CHECKING:  # torch is imported lazily: safetensors read as numpy (load_numpy) never need it
    import torch

__all__ = ["FileInfo", "TensorMeta", "Checkpoint", "open_checkpoint", "natural_key"]

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
NESTING_KEYS = ("state_dict", "model", "model_state_dict", "module")

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


def natural_key(name: str) -> tuple:
    """Sort key putting ``layer.2`` before ``layer.10`` (digit runs compare as numbers)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ----------------------------------------------------------------------------------------------------
# backends: each maps tensor names to metadata and reads one tensor on request


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


class _ModuleSource:
    """A live module: metadata from ``state_dict()``; ``load`` returns a detached copy."""

    def __init__(self, module: torch.nn.Module):
        import torch

        sd = module.state_dict(keep_vars=False)
        self.tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
        self.metas = {
            k: TensorMeta(k, tuple(t.shape), _dtype_name(t.dtype), None) for k, t in self.tensors.items()
        }
        self.path = f"<module {type(module).__name__}>"

    def load_numpy(self, name: str) -> np.ndarray:
        return _torch_to_numpy(self.load(name))

    def load(self, name: str) -> torch.Tensor:
        t = self.tensors[name]
        if t.device.type == "meta":
            raise InputError(self.path, f"tensor '{name}' is on the meta device and has no data")
        return t.detach().clone()

    def close(self) -> None:
        self.tensors = {}


# ----------------------------------------------------------------------------------------------------


class Checkpoint:
    """A read-only, lazily loaded collection of named tensors with provenance.

    ``names()``/``meta()`` never read tensor data; ``load(name)`` reads exactly one tensor, so peak
    memory stays near the largest tensor. Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        source: str,
        files: list[FileInfo],
        backends: dict[str, Any],
        *,
        config: dict | None = None,
        module_types: dict[str, str] | None = None,
        notes: list[str] | None = None,
    ):
        self.source = source
        self.files = files
        self.config = config
        self.module_types = dict(module_types or {})
        self.notes = list(notes or [])
        self._backends = backends  # tensor name -> backend object
        self._names = sorted(backends, key=natural_key)
        self._closed = False

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._backends

    def __repr__(self) -> str:
        return f"Checkpoint({self.source!r}, {len(self._names)} tensors, {len(self.files)} file(s))"

    def names(self) -> list[str]:
        """The checkpoint's own tensor keys, natural-sorted."""
        return list(self._names)

    def meta(self, name: str) -> TensorMeta:
        """Shape/dtype/file of ``name`` without reading its data."""
        return self._backend(name).metas[name]

    def load(self, name: str) -> torch.Tensor:
        """Read one tensor (a fresh CPU tensor for files, a detached copy for live modules)."""
        if self._closed:
            raise ValueError(f"checkpoint {self.source!r} is closed")
        return self._backend(name).load(name)

    def load_numpy(self, name: str) -> np.ndarray:
        """Read one tensor as a numpy array (bf16/f16 as exact float32). Torch-free for safetensors."""
        if self._closed:
            raise ValueError(f"checkpoint {self.source!r} is closed")
        return self._backend(name).load_numpy(name)

    @property
    def torch_free(self) -> bool:
        """True when every tensor comes from safetensors, so :meth:`load_numpy` never imports torch."""
        return all(isinstance(b, _SafetensorsFile) for b in self._backends.values())

    def iter_tensors(self, names: list[str] | None = None):
        """Yield ``(name, tensor)`` one at a time (only one tensor alive per step if the caller drops it)."""
        for n in self._names if names is None else names:
            yield n, self.load(n)

    def close(self) -> None:
        """Release file handles / memory maps. Metadata stays available."""
        for b in {id(b): b for b in self._backends.values()}.values():
            b.close()
        self._closed = True

    def _backend(self, name: str):
        try:
            return self._backends[name]
        except KeyError:
            raise KeyError(f"no tensor named {name!r} in {self.source}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "files": [f.to_dict() for f in self.files],
            "num_tensors": len(self._names),
            "config": self.config,
            "notes": list(self.notes),
        }


def open_checkpoint(source: str | Path | torch.nn.Module, *, config: dict | None = None) -> Checkpoint:
    """Open a checkpoint file/folder/module; see the module docstring for what is accepted.

    ``config`` overrides any ``config.json`` found next to the weights (used for QKV head layouts and
    GPT-2 Conv1D detection). Raises :class:`InputError` for missing, corrupt, unsafe or empty inputs.
    """
    if not isinstance(source, str | os.PathLike):
        import torch

        if isinstance(source, torch.nn.Module):
            return _open_module(source, config)
        raise InputError(None, f"cannot open a checkpoint from a {type(source).__name__}")
    path = Path(source)
    if not path.exists():
        raise InputError(path, "no such file or directory")
    notes: list[str] = []
    if path.is_dir():
        ckpt = _open_folder(path, notes, config)
    else:
        ckpt = _open_file(path, notes, config, explicit=True)
    ckpt.source = str(source)
    return ckpt


# ----------------------------------------------------------------------------------------------------
# opening


def _open_module(module: torch.nn.Module, config: dict | None) -> Checkpoint:
    src = _ModuleSource(module)
    if not src.tensors:
        raise InputError(src.path, "empty checkpoint: the module has no parameters or buffers")
    module_types: dict[str, str] = {}
    for mod_name, mod in module.named_modules(remove_duplicate=False):
        prefix = f"{mod_name}." if mod_name else ""
        for pname, _ in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
            module_types.setdefault(prefix + pname, type(mod).__name__)
    if config is None:
        cfg = getattr(module, "config", None)
        if cfg is not None and hasattr(cfg, "to_dict"):
            config = cfg.to_dict()
    notes = []
    dropped = len(module.state_dict()) - len(src.tensors)
    if dropped:
        notes.append(f"{dropped} non-tensor state_dict entries ignored")
    return Checkpoint(
        src.path,
        [FileInfo(src.path, 0, "module")],
        dict.fromkeys(src.tensors, src),
        config=config,
        module_types={k: v for k, v in module_types.items() if k in src.tensors},
        notes=notes,
    )


def _open_folder(folder: Path, notes: list[str], config: dict | None) -> Checkpoint:
    cfg_path = folder / "config.json"
    if config is None and cfg_path.is_file():
        config = _read_json(cfg_path, "config.json")
        if not isinstance(config, dict):
            raise InputError(cfg_path, "config.json is not a JSON object")
    for candidate in (
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    ):
        if (folder / candidate).is_file():
            return _open_file(folder / candidate, notes, config, explicit=False)
    weights = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix in SAFETENSORS_SUFFIXES + TORCH_SUFFIXES
    )
    indexes = sorted(folder.glob("*.index.json"))
    if len(indexes) == 1:
        return _open_file(indexes[0], notes, config, explicit=False)
    if len(weights) == 1:
        notes.append(f"using the only weight file in the folder: {weights[0].name}")
        return _open_file(weights[0], notes, config, explicit=False)
    if not weights:
        raise InputError(
            folder,
            "no weight files found (expected model.safetensors, an *.index.json, pytorch_model.bin, "
            "or a .safetensors/.bin/.pt/.pth file)",
        )
    listed = ", ".join(p.name for p in weights[:5]) + (" ..." if len(weights) > 5 else "")
    raise InputError(folder, f"several weight files and no index ({listed}); pass one file explicitly")


def _open_file(path: Path, notes: list[str], config: dict | None, *, explicit: bool) -> Checkpoint:
    name = path.name
    if explicit and config is None and (path.parent / "config.json").is_file():
        try:
            config = json.loads((path.parent / "config.json").read_text())
            notes.append("read config.json next to the weights")
        except (OSError, ValueError):
            notes.append("config.json next to the weights is unreadable; ignored")
        if not isinstance(config, dict):
            config = None
    if name.endswith(".index.json"):
        return _open_index(path, notes, config)
    if path.suffix in SAFETENSORS_SUFFIXES:
        backend = _SafetensorsFile(path)
        _require_tensors(backend.metas, path)
        files = [FileInfo(str(path), backend.size, "safetensors")]
        return Checkpoint(str(path), files, dict.fromkeys(backend.metas, backend), config=config, notes=notes)
    if path.suffix in TORCH_SUFFIXES:
        backend = _TorchFile(path, notes)
        _require_tensors(backend.metas, path)
        files = [FileInfo(str(path), backend.size, "torch")]
        return Checkpoint(str(path), files, dict.fromkeys(backend.metas, backend), config=config, notes=notes)
    raise InputError(
        path,
        f"unsupported file type '{path.suffix or name}' (expected .safetensors, .bin, .pt, .pth, .ckpt, "
        "a *.index.json or a model folder)",
    )


def _open_index(index_path: Path, notes: list[str], config: dict | None) -> Checkpoint:
    index = _read_json(index_path, "index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise InputError(index_path, "not a valid index: missing or malformed 'weight_map'")
    if not weight_map:
        raise InputError(index_path, "empty checkpoint: the index lists no tensors")
    shards: dict[str, Any] = {}
    files: list[FileInfo] = []
    for shard_name in sorted(set(weight_map.values()), key=natural_key):
        shard_path = index_path.parent / shard_name
        if not shard_path.is_file():
            raise InputError(index_path, f"shard '{shard_name}' listed in the index is missing")
        if shard_path.suffix in SAFETENSORS_SUFFIXES:
            shards[shard_name] = _SafetensorsFile(shard_path)
            files.append(FileInfo(str(shard_path), shards[shard_name].size, "safetensors"))
        elif shard_path.suffix in TORCH_SUFFIXES:
            shards[shard_name] = _TorchFile(shard_path, notes)
            files.append(FileInfo(str(shard_path), shards[shard_name].size, "torch"))
        else:
            raise InputError(shard_path, f"unsupported shard file type '{shard_path.suffix}'")
    backends: dict[str, Any] = {}
    for tensor_name, shard_name in weight_map.items():
        shard = shards[shard_name]
        if tensor_name not in shard.metas:
            raise InputError(
                shard.path, f"tensor '{tensor_name}' listed in {index_path.name} is not in this shard"
            )
        backends[tensor_name] = shard
    extra = sum(len(set(s.metas) - set(weight_map)) for s in shards.values())
    if extra:
        notes.append(f"{extra} tensors present in shards but not listed in the index were ignored")
    return Checkpoint(str(index_path), files, backends, config=config, notes=notes)


# ----------------------------------------------------------------------------------------------------
# helpers


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


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(path, f"cannot parse {what} JSON: {_one_line(exc)}") from None


def _require_tensors(metas: dict, path: Path) -> None:
    if not metas:
        raise InputError(path, "empty checkpoint: no tensors found")


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


def _torch_to_numpy(t: torch.Tensor) -> np.ndarray:
    """A loaded torch tensor as numpy; low-precision floats go to float32 (exact), others as stored."""
    import torch

    if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    return t.numpy(force=True)


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
