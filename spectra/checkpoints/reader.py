"""Lazy, read-only tensor source over every checkpoint form a user is likely to hand us.

Supported sources (``open_checkpoint``):

* a single ``.safetensors`` file;
* sharded safetensors: a ``model.safetensors.index.json`` file, or the folder holding it;
* a Hugging Face model folder: ``model.safetensors`` / its index, else ``pytorch_model.bin`` / its index,
  else a single weight file; ``config.json`` is parsed when present;
* a PyTorch checkpoint in ``.bin`` / ``.pt`` / ``.pth`` / ``.ckpt``, always read with
  ``torch.load(weights_only=True, map_location="cpu", mmap=True)`` (non-mmap only for the legacy
  non-zip format); the weights are found at any depth (``state_dict``, ``model_state``, Lightning, EMA
  beside the model), wrapper prefixes removed and optimizer state listed apart (``state_dicts``);
* a GGUF file (llama.cpp; needs the ``gguf`` package): tensors dequantized one at a time, llama names
  mapped to HF names, Q/K row permutation undone (``gguf_file``, ``gguf_names``);
* a live ``torch.nn.Module`` (its ``state_dict()``; the module is never modified and ``load`` returns
  copies).

Everything that can be validated without reading tensor data (headers, shard lists, byte ranges) is
checked when the checkpoint is opened, so a command fails before it writes anything. All problems are
reported as :class:`hessian_spectra.errors.InputError` naming the offending file.

This module holds the Checkpoint and the opening logic (folders, format dispatch); each format's reader is
its own module: ``safetensors_file``, ``torch_file``, ``gguf_file``, ``module_source``, and ``sharded``
(indexes). Limits on hostile input are in ``limits``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from hessian_spectra.checkpoints.base import FileInfo, TensorMeta, natural_key
from hessian_spectra.checkpoints.gguf_file import GGUF_SUFFIXES, _GGUFFile
from hessian_spectra.checkpoints.limits import MAX_TENSORS, read_json_limited, show_name
from hessian_spectra.checkpoints.module_source import _ModuleSource
from hessian_spectra.checkpoints.safetensors_file import _SafetensorsFile
from hessian_spectra.checkpoints.sharded import SAFETENSORS_SUFFIXES, TORCH_SUFFIXES, open_index
from hessian_spectra.checkpoints.torch_file import _TorchFile
from hessian_spectra.errors import InputError

if TYPE_CHECKING:  # torch is imported lazily: safetensors read as numpy (load_numpy) never need it
    import torch

__all__ = ["Checkpoint", "open_checkpoint", "natural_key"]


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
        if len(self._names) > MAX_TENSORS:
            raise InputError(
                source, f"{len(self._names)} tensors, above the limit of {MAX_TENSORS} per checkpoint"
            )

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
        """Read one tensor (a fresh CPU tensor for files, a detached copy for live modules). InputError for
        a tensor whose ``meta.skip`` says it cannot be read densely (sparse, self-overlapping, above the cap)."""
        return self._readable(name).load(name)

    def load_numpy(self, name: str) -> np.ndarray:
        """Read one tensor as a numpy array (bf16/f16 as exact float32). Torch-free for safetensors/GGUF."""
        return self._readable(name).load_numpy(name)

    def _readable(self, name: str):
        if self._closed:
            raise ValueError(f"checkpoint {self.source!r} is closed")
        backend = self._backend(name)
        skip = backend.metas[name].skip
        if skip is not None:
            raise InputError(
                getattr(backend, "path", self.source), f"tensor '{show_name(name)}' cannot be read: {skip}"
            )
        return backend

    @property
    def torch_free(self) -> bool:
        """True when every tensor comes from safetensors or GGUF, so :meth:`load_numpy` never imports torch."""
        return all(getattr(b, "torch_free", False) for b in self._backends.values())

    def extras(self) -> list[TensorMeta]:
        """Tensors stored beside the weights that are not weights (optimizer state), for the inventory."""
        out: list[TensorMeta] = []
        for b in {id(b): b for b in self._backends.values()}.values():
            out.extend(getattr(b, "extras", []))
        return out

    def optimizer_report(self) -> dict[str, Any] | None:
        """Adam's second moments per parameter when the checkpoint holds optimizer state, else None."""
        for b in {id(b): b for b in self._backends.values()}.values():
            report = getattr(b, "optimizer_report", lambda: None)()
            if report is not None:
                return report
        return None

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


def open_checkpoint(
    source: str | Path | torch.nn.Module, *, config: dict | None = None, entry: str | None = None
) -> Checkpoint:
    """Open a checkpoint file/folder/module; see the module docstring for what is accepted.

    ``config`` overrides any ``config.json`` found next to the weights (used for QKV head layouts and
    GPT-2 Conv1D detection). ``entry`` picks the nested entry of a torch checkpoint holding the weights
    (``"ema"``, ``"model_state"``, a ``/``-separated path) instead of the automatic choice. Raises
    :class:`InputError` for missing, corrupt, unsafe or empty inputs.
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
        ckpt = _open_folder(path, notes, config, entry)
    else:
        ckpt = _open_file(path, notes, config, explicit=True, entry=entry)
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


def _open_folder(folder: Path, notes: list[str], config: dict | None, entry: str | None) -> Checkpoint:
    cfg_path = folder / "config.json"
    if config is None and cfg_path.is_file():
        config = read_json_limited(cfg_path, "config.json")
        if not isinstance(config, dict):
            raise InputError(cfg_path, "config.json is not a JSON object")
    for candidate in (
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    ):
        if (folder / candidate).is_file():
            return _open_file(folder / candidate, notes, config, explicit=False, entry=entry)
    suffixes = SAFETENSORS_SUFFIXES + TORCH_SUFFIXES + GGUF_SUFFIXES
    weights = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in suffixes)
    indexes = sorted(folder.glob("*.index.json"))
    if len(indexes) == 1:
        return _open_file(indexes[0], notes, config, explicit=False)
    if len(weights) == 1:
        notes.append(f"using the only weight file in the folder: {weights[0].name}")
        return _open_file(weights[0], notes, config, explicit=False, entry=entry)
    if not weights:
        raise InputError(
            folder,
            "no weight files found (expected model.safetensors, an *.index.json, pytorch_model.bin, "
            "or a .safetensors/.bin/.pt/.pth/.gguf file)",
        )
    listed = ", ".join(p.name for p in weights[:5]) + (" ..." if len(weights) > 5 else "")
    raise InputError(folder, f"several weight files and no index ({listed}); pass one file explicitly")


def _open_file(
    path: Path, notes: list[str], config: dict | None, *, explicit: bool, entry: str | None = None
) -> Checkpoint:
    name = path.name
    if (
        explicit
        and config is None
        and path.suffix not in GGUF_SUFFIXES
        and (path.parent / "config.json").is_file()
    ):
        try:
            config = read_json_limited(path.parent / "config.json", "config.json")
            notes.append("read config.json next to the weights")
        except InputError:
            notes.append("config.json next to the weights is unreadable; ignored")
        if not isinstance(config, dict):
            config = None
    if entry is not None and path.suffix not in TORCH_SUFFIXES:
        raise InputError(path, f"entry={entry!r} picks a nested entry of a torch checkpoint; this is not one")
    if name.endswith(".index.json"):
        files, backends = open_index(path, notes)
        return Checkpoint(str(path), files, backends, config=config, notes=notes)
    if path.suffix in SAFETENSORS_SUFFIXES:
        backend = _SafetensorsFile(path)
        _require_tensors(backend.metas, path)
        files = [FileInfo(str(path), backend.size, "safetensors")]
        return Checkpoint(str(path), files, dict.fromkeys(backend.metas, backend), config=config, notes=notes)
    if path.suffix in TORCH_SUFFIXES:
        backend = _TorchFile(path, notes, entry=entry)
        _require_tensors(backend.metas, path)
        files = [FileInfo(str(path), backend.size, "torch")]
        return Checkpoint(str(path), files, dict.fromkeys(backend.metas, backend), config=config, notes=notes)
    if path.suffix in GGUF_SUFFIXES:
        backend = _GGUFFile(path, notes)
        _require_tensors(backend.metas, path)
        files = [FileInfo(str(path), backend.size, "gguf")]
        cfg = backend.config if config is None else config
        return Checkpoint(str(path), files, dict.fromkeys(backend.metas, backend), config=cfg, notes=notes)
    raise InputError(
        path,
        f"unsupported file type '{path.suffix or name}' (expected .safetensors, .bin, .pt, .pth, .ckpt, "
        ".gguf, a *.index.json or a model folder)",
    )


# ----------------------------------------------------------------------------------------------------
# helpers


def _require_tensors(metas: dict, path: Path) -> None:
    if not metas:
        raise InputError(path, "empty checkpoint: no tensors found")
