"""Resumable Hessian runs: every finished phase (full Lanczos, full SLQ, block SLQ, each group of exact
blocks) is saved atomically in ``OUT/.spectra-resume/`` as it ends; ``--resume`` loads what is there
instead of recomputing it, so an interrupted run (Ctrl-C, a killed job, a full disk) loses at most the
phase it was in. The saved results are the very float64 numbers the phase produced, so a resumed run's
report equals an uninterrupted one with the same seed (timings aside).

The folder holds ``state.json`` (schema, the run's key: settings, blocks, a SHA-256 of the parameters
and batches, versions) and one ``<phase>.pt`` per finished phase (tensors, lists and numbers only, read
with ``torch.load(weights_only=True)``: nothing in it can run code). A resume whose key differs from
the saved one is refused, naming what changed. The CLI removes the folder once the report is written,
and it is never part of the output set (hidden, not in the manifest).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hessian_spectra.errors import InputError, OutputError

__all__ = ["RESUME_DIR", "ResumeStore", "fingerprint", "pack", "unpack"]

RESUME_DIR = ".spectra-resume"
STATE_FILE = "state.json"
SCHEMA = "hessian-spectra/resume/1"


def _classes() -> dict[str, type]:
    """The result types a phase may hold (only these are rebuilt on load)."""
    from hessian_spectra.krylov.deflation import Deflation
    from hessian_spectra.krylov.exact import ExactSpectrum
    from hessian_spectra.krylov.result import LanczosResult
    from hessian_spectra.krylov.slq import SLQResult

    return {c.__name__: c for c in (Deflation, ExactSpectrum, LanczosResult, SLQResult)}


def pack(obj: Any) -> Any:
    """``obj`` as tensors, lists, dicts and numbers (what ``torch.load(weights_only=True)`` reads):
    result dataclasses and numpy arrays tagged so :func:`unpack` rebuilds them bit for bit."""
    if is_dataclass(obj) and not isinstance(obj, type):
        name = type(obj).__name__
        if name not in _classes():
            raise TypeError(f"cannot save a {name} in the resume state")
        return {"__dataclass__": name, "fields": {f.name: pack(getattr(obj, f.name)) for f in fields(obj)}}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(obj).copy())}
    if isinstance(obj, np.generic):
        return {"__npscalar__": obj.dtype.str, "value": obj.item()}
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, tuple):
        return {"__tuple__": [pack(x) for x in obj]}
    if isinstance(obj, list):
        return [pack(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): pack(v) for k, v in obj.items()}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot save a {type(obj).__name__} in the resume state")


def unpack(obj: Any) -> Any:
    """The inverse of :func:`pack`."""
    if isinstance(obj, dict):
        if "__dataclass__" in obj:
            cls = _classes()[obj["__dataclass__"]]
            return cls(**{k: unpack(v) for k, v in obj["fields"].items()})
        if "__ndarray__" in obj:
            return obj["__ndarray__"].numpy()
        if "__npscalar__" in obj:
            return np.dtype(obj["__npscalar__"]).type(obj["value"])
        if "__tuple__" in obj:
            return tuple(unpack(x) for x in obj["__tuple__"])
        return {k: unpack(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unpack(x) for x in obj]
    return obj


def _tensors(obj: Any) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for k in sorted(obj, key=str):
            yield from _tensors(obj[k])
    elif isinstance(obj, list | tuple):
        for x in obj:
            yield from _tensors(x)


def fingerprint(model: torch.nn.Module, batches: Any) -> str:
    """SHA-256 over the model's parameter and buffer names, shapes, dtypes and bytes, then every tensor
    of the batches: a resume is refused when any weight or input token differs."""
    h = hashlib.sha256()
    named = [*model.named_parameters(), *model.named_buffers()]
    for name, t in [*named, *((f"batch.{i}", t) for i, t in enumerate(_tensors(batches)))]:
        t = t.detach()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class ResumeStore:
    """The resume folder of one run: ``load(phase)`` (None when not saved), ``save(phase, value)``
    (atomic), ``discard()`` once the outputs are written. ``resume=False`` starts over (a previous
    state is removed on the first save); ``resume=True`` checks the saved key against ``key``."""

    def __init__(self, out: str | Path, key: Mapping[str, Any], *, resume: bool):
        self.folder = Path(out) / RESUME_DIR
        self.key = json.loads(json.dumps(dict(key), sort_keys=True, default=str))
        self.resume = resume
        self.saved: list[str] = []
        self._fresh = not resume
        if resume and (self.folder / STATE_FILE).is_file():
            self._check()
            self.saved = sorted(p.stem for p in self.folder.glob("*.pt"))

    def _check(self) -> None:
        where = self.folder / STATE_FILE
        try:
            state = json.loads(where.read_text())
            if state.get("schema") != SCHEMA:
                raise ValueError(f"schema {state.get('schema')!r}")
            saved = state["key"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(
                "--resume", f"{where} is not a resume state ({exc}); rerun without --resume"
            ) from exc
        if saved != self.key:
            keys = set(saved) | set(self.key)
            diff = sorted(k for k in keys if saved.get(k) != self.key.get(k))
            raise InputError(
                "--resume",
                f"the interrupted run in {self.folder.parent} used different {', '.join(diff)}; rerun with the "
                "same settings and inputs, or without --resume to start over",
            )

    def load(self, phase: str) -> Any | None:
        """The saved value of ``phase`` (None when it was not saved or this is not a resume)."""
        path = self.folder / f"{phase}.pt"
        if not self.resume or phase not in self.saved:
            return None
        try:
            return unpack(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as exc:  # noqa: BLE001 - a damaged state file is one line, not a traceback
            raise InputError(
                path, f"cannot read the saved phase ({exc!s:.120}); rerun without --resume"
            ) from exc

    def save(self, phase: str, value: Any) -> None:
        """Write ``phase`` atomically (temporary file, fsync, rename); the first save of a fresh run
        replaces any earlier state."""
        from hessian_spectra.io import atomic_write_bytes, atomic_write_json

        try:
            if self._fresh:
                shutil.rmtree(self.folder, ignore_errors=True)
                self._fresh = False
            if not (self.folder / STATE_FILE).is_file():
                self.folder.mkdir(parents=True, exist_ok=True)
                atomic_write_json(self.folder / STATE_FILE, {"schema": SCHEMA, "key": self.key})
            buf = io.BytesIO()
            torch.save(pack(value), buf)
            atomic_write_bytes(self.folder / f"{phase}.pt", buf.getvalue())
        except OSError as exc:
            raise OutputError(self.folder, f"cannot save progress ({exc.strerror or exc})") from exc
        self.saved.append(phase)

    def discard(self) -> None:
        """Remove the folder (the run's outputs are written; nothing is left to resume)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        if os.path.isdir(self.folder):  # pragma: no cover - a file system that refused
            raise OutputError(self.folder, "cannot remove the resume state")
