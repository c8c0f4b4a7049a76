"""File output: atomic writes with the user's umask, output paths checked before any work, JSON helpers.

A reader never sees a half-written file, and a folder of outputs is replaced as one set by
:func:`staged_directory` (:mod:`hessian_spectra.output_set`). Every ``OSError`` while writing becomes
an :class:`~hessian_spectra.errors.OutputError` naming the path (one line in the CLI).
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from hessian_spectra.errors import OutputError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_output_dir",
    "check_output_file",
    "json_safe",
    "staged_directory",
    "umask_mode",
    "user_umask",
]

#: Bytes written (and fsynced) by the writability probe: enough to hit ENOSPC on a full disk or tmpfs.
PROBE_BYTES = 4096


def user_umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc), else by a swap."""
    with suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` with the process umask applied: what ``open()`` gives a new file (mkstemp makes 0600, so
    files written through a temp file are chmod-ed to this)."""
    return mode & ~user_umask()


def atomic_write_bytes(path: str | Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and an atomic rename.

    The file gets the permissions of a plain ``open()`` (0666 minus the umask), not mkstemp's 0600.
    ``durable`` fsyncs before the rename (off for private bookkeeping files that only a crash of this
    process, not of the machine, has to survive).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(path, f"cannot write ({exc.strerror or exc})") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), umask_mode())
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OutputError(path, f"cannot write ({exc.strerror or exc})") from exc
        raise


def atomic_write_text(path: str | Path, text: str, *, durable: bool = True) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Serialise ``obj`` as indented JSON (NaN/inf written as null) and write it atomically."""
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")


def json_safe(obj: Any) -> Any:
    """Recursively replace non-finite floats by None and numpy scalars/arrays by Python values."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def check_output_dir(path: str | Path, option: str = "--out") -> Path:
    """Fail early, before any analysis, when ``path`` cannot become a folder of outputs.

    Checks that it is a folder or can be created (no file in the way, no broken link), and proves it is
    writable by creating, filling (:data:`PROBE_BYTES`, fsynced: a full disk fails here) and removing a
    probe file; folders created for the probe are removed again, so nothing is left behind.
    Raises :class:`OutputError` naming ``option``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(path, f"{option} names a file, not a folder")
    missing: list[Path] = []
    anchor = path
    while not anchor.exists():
        if anchor.is_symlink():
            raise OutputError(path, f"{option}: {anchor} is a broken symbolic link")
        missing.append(anchor)
        if anchor.parent == anchor:
            break
        anchor = anchor.parent
    if anchor.exists() and not anchor.is_dir():
        raise OutputError(path, f"{option} cannot be created: {anchor} is a file, not a folder")
    created: list[Path] = []
    try:
        for folder in reversed(missing):
            folder.mkdir()
            created.append(folder)
        _probe_write(path)
    except OSError as exc:
        where = f"{anchor} " if missing else ""
        raise OutputError(path, f"{option}: {where}is not writable ({exc.strerror or exc})") from None
    finally:
        for folder in reversed(created):
            with suppress(OSError):
                folder.rmdir()
    return path


def check_output_file(path: str | Path, option: str = "--out") -> Path:
    """:func:`check_output_dir` for a single output file: not a folder, and its folder is writable."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(path, f"{option} names a folder, not a file")
    check_output_dir(path.parent if str(path.parent) else Path("."), option)
    return path


def _probe_write(folder: Path) -> None:
    probe = folder / f".spectra-probe.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"\0" * PROBE_BYTES)
        os.fsync(fd)
    finally:
        os.close(fd)
        with suppress(OSError):
            os.unlink(probe)


@contextmanager
def staged_directory(final: str | Path) -> Iterator[Path]:
    """Yield a staging folder; on success its files replace the tool's previous outputs in ``final`` as
    one set, on any error or signal nothing in ``final`` changes (see :mod:`hessian_spectra.output_set`)."""
    from hessian_spectra.output_set import staged_output_set

    with staged_output_set(final) as stage:
        yield stage
