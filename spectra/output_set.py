"""A folder of outputs replaced as one set: staging, manifest, rollback, signals and stale-stage recovery.

Protocol (design notes in spectra/docs/output-sets.md):

* The outputs are written into ``FINAL/.spectra-stage.<pid>.<random>/new/`` (same file system as the
  final files, so every move is an atomic rename); ``owner.json`` there names the host, pid and process
  start time.
* Commit, under an exclusive ``flock`` on ``FINAL`` and with SIGINT/SIGTERM/SIGHUP blocked: write
  ``journal.json`` (state ``committing``, the new and the previous file lists), move every file the new
  set replaces and every file of the previous set (``FINAL/.spectra-manifest.json`` lists the files the
  tool wrote last time) into ``old/``, move the new files in, manifest last, then mark the journal
  ``committed`` and delete the stage. An error on the way moves everything back: the previous set.
* SIGINT/SIGTERM/SIGHUP whose handler is the default raise :class:`~hessian_spectra.errors.Interrupted`
  while a stage exists (:func:`hessian_spectra.signals.raising_signals`; Python's KeyboardInterrupt and
  handlers of the caller are kept), so the stage is removed like on any error. ``kill -9`` cannot be
  caught: the next run into the same folder finds the stage, sees its owner is dead, rolls back a
  half-done commit from the journal and deletes it.
* Only files listed in a manifest, or replaced by a file of the same name, are ever removed; manifest
  entries that leave ``FINAL`` (``..``, absolute paths, symlinked folders) are ignored.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from hessian_spectra.errors import OutputError
from hessian_spectra.signals import blocked_signals, raising_signals

__all__ = ["MANIFEST", "STAGE_PREFIX", "read_manifest", "recover_stale_stages", "staged_output_set"]

MANIFEST = ".spectra-manifest.json"
STAGE_PREFIX = ".spectra-stage."
MANIFEST_SCHEMA = "hessian-spectra/outputs/1"


@contextmanager
def staged_output_set(final: str | Path) -> Iterator[Path]:
    """Yield a staging folder; when the block ends normally its files become ``final``'s outputs as one
    set (previous tool outputs replaced, user files kept); on any exception, signal or failure nothing
    in ``final`` changes and the stage is gone. ``final`` is created if needed (removed again if it was
    created here and the run fails)."""
    final = Path(final)
    created = _make_dirs(final)
    try:
        with _locked(final):
            recover_stale_stages(final)
        stage = _new_stage(final)
    except (OutputError, OSError) as exc:
        _remove_created(created)
        why = exc.problem if isinstance(exc, OutputError) else f"cannot write ({exc.strerror or exc})"
        raise OutputError(final, why) from exc
    except BaseException:
        _remove_created(created)
        raise
    committed = False
    try:
        with raising_signals():
            try:
                yield stage / "new"
            except (OutputError, OSError) as exc:
                relocated = _relocated(exc, stage / "new", final)
                if relocated is None:
                    raise
                raise relocated from exc
            with blocked_signals(), _locked(final):
                try:
                    _commit(stage, final)
                except OSError as exc:
                    why = exc.strerror or str(exc)
                    raise OutputError(
                        final, f"cannot replace the outputs ({why}); the previous ones are unchanged"
                    ) from exc
                committed = True
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if not committed:
            _remove_created(created)


def _relocated(exc: OutputError | OSError, new: Path, final: Path) -> OutputError | None:
    """A write error inside the stage, renamed to the final file it was for (the stage is private)."""
    where = exc.path if isinstance(exc, OutputError) else exc.filename
    if where is None:
        return None
    try:
        rel = Path(os.fsdecode(where)).relative_to(new)
    except ValueError:
        return None
    why = exc.problem if isinstance(exc, OutputError) else f"cannot write ({exc.strerror or exc})"
    return OutputError(final / rel, f"{why}; nothing was changed in {final}")


# ---------------------------------------------------------------- stage, owner, manifest


def _new_stage(final: Path) -> Path:
    import secrets

    stage = final / f"{STAGE_PREFIX}{os.getpid()}.{secrets.token_hex(6)}"
    stage.mkdir()
    (stage / "new").mkdir()
    _write_json(
        stage / "owner.json",
        {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid())},
    )
    return stage


def _start_time(pid: int) -> str | None:
    """The process start time in clock ticks since boot (Linux /proc), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _owner_alive(owner: dict[str, Any]) -> bool:
    """True unless the stage's owner is provably gone (same host, pid dead or reused)."""
    if owner.get("host") != socket.gethostname():
        return True  # another machine's process (shared file system): never touch its stage
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, someone else's
    start = owner.get("start")
    return start is None or _start_time(pid) in (None, start)


def read_manifest(final: Path) -> list[str]:
    """The relative file names the tool wrote into ``final`` last time (only safe names: inside ``final``,
    no ``..``, no absolute paths, no symlinked folders on the way); [] without a readable manifest."""
    try:
        doc = json.loads((final / MANIFEST).read_text())
        names = doc["files"] if doc.get("schema") == MANIFEST_SCHEMA else []
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    return [n for n in names if isinstance(n, str) and _safe_relative(final, n)]


def _safe_relative(final: Path, name: str) -> bool:
    rel = Path(name)
    if not name or rel.is_absolute() or any(p in ("..", ".", "") for p in rel.parts) or "\x00" in name:
        return False
    node = final
    for part in rel.parts[:-1]:
        node = node / part
        if node.is_symlink():
            return False
    return True


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())


# ---------------------------------------------------------------- commit and rollback


def _commit(stage: Path, final: Path) -> None:
    new, old = stage / "new", stage / "old"
    new_files = _files(new)
    _write_json(
        new / MANIFEST, {"schema": MANIFEST_SCHEMA, "files": new_files, "written": time.time()}, durable=True
    )
    previous = read_manifest(final)
    journal = {
        "state": "committing",
        "new": [*new_files, MANIFEST],
        "touched": sorted({*new_files, *previous, MANIFEST}),
    }
    _write_json(stage / "journal.json", journal)
    try:
        for rel in journal["touched"]:  # move aside what the new set replaces and the previous set
            target = final / rel
            if target.is_file() or target.is_symlink():
                (old / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(target, old / rel)
        for rel in journal["new"]:  # the manifest goes last: it marks the set complete
            (final / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(new / rel, final / rel)
        _fsync_dir(final)
        journal["state"] = "committed"
        _write_json(stage / "journal.json", journal)
    except BaseException:
        _rollback(stage, final, journal)
        raise
    _prune_dirs(final, [*previous, *journal["new"]])


def _rollback(stage: Path, final: Path, journal: dict[str, Any]) -> None:
    """Undo a commit that did not finish: new files back into the stage, the previous set back in place."""
    new, old = stage / "new", stage / "old"
    for rel in journal.get("new", []):
        if _safe_relative(final, rel) and (final / rel).exists() and not (new / rel).exists():
            (new / rel).parent.mkdir(parents=True, exist_ok=True)
            with suppress(OSError):
                os.replace(final / rel, new / rel)
    for rel in _files(old) if old.is_dir() else []:
        (final / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(old / rel, final / rel)
    _prune_dirs(final, journal.get("new", []))


def recover_stale_stages(final: Path) -> list[Path]:
    """Finish off stages left in ``final`` by dead processes (``kill -9``): roll back a commit that was
    under way, then delete the stage. Returns the stages removed. Call with ``final`` locked."""
    removed = []
    for stage in sorted(final.glob(f"{STAGE_PREFIX}*")):
        if not stage.is_dir() or stage.is_symlink():
            continue
        try:
            owner = json.loads((stage / "owner.json").read_text())
        except (OSError, ValueError):
            owner = {"host": socket.gethostname(), "pid": _pid_from_name(stage.name)}
        if not isinstance(owner, dict) or _owner_alive(owner):
            continue
        with suppress(OSError, ValueError):
            journal = json.loads((stage / "journal.json").read_text())
            if isinstance(journal, dict) and journal.get("state") == "committing":
                _rollback(stage, final, journal)
        shutil.rmtree(stage, ignore_errors=True)
        removed.append(stage)
    return removed


def _pid_from_name(name: str) -> int | None:
    try:
        return int(name[len(STAGE_PREFIX) :].split(".")[0])
    except ValueError:
        return None


def _prune_dirs(final: Path, names: list[str]) -> None:
    """Remove folders under ``final`` that held the tool's files and are now empty (never ``final``)."""
    parents = {Path(n).parent for n in names if _safe_relative(final, n)} - {Path(".")}
    for rel in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        for folder in (rel, *rel.parents):
            if folder == Path("."):
                break
            with suppress(OSError):
                (final / folder).rmdir()  # only succeeds when empty


def _write_json(path: Path, obj: Any, *, durable: bool = False) -> None:
    """Bookkeeping JSON (owner, journal: private to the stage, no fsync; the manifest: durable)."""
    from hessian_spectra.io import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=1) + "\n", durable=durable)


def _fsync_dir(folder: Path) -> None:
    with suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------- folders and locks


def _make_dirs(final: Path) -> list[Path]:
    """Create ``final`` and missing parents; return what was created (outermost first)."""
    missing = []
    node = final
    while not node.exists() and node.parent != node:
        missing.append(node)
        node = node.parent
    created = []
    try:
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                if folder.is_dir():  # a concurrent run made it first: theirs, not ours to remove
                    continue
                raise
            created.append(folder)
    except OSError as exc:
        _remove_created(created)
        raise OutputError(final, f"cannot create the output folder ({exc.strerror or exc})") from exc
    return created


def _remove_created(created: list[Path]) -> None:
    for folder in reversed(created):
        with suppress(OSError):
            folder.rmdir()


@contextmanager
def _locked(final: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the folder itself (no lock file), so concurrent runs commit one by one."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(final, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
