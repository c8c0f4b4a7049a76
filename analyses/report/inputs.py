"""What a report was computed from: input files with sizes and SHA-256 (streamed in a background thread
while the analysis runs, its cost recorded), data and tokenisation settings, token counts, and inputs the
tool created itself (recorded as such, never as a temporary path)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["sha256_file", "HashJob", "hash_files", "folder_files", "finish_inputs", "hf_inputs", "factory_inputs",
           "generated_input", "token_counts"]  # fmt: skip

CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (memory bounded; hashlib releases the GIL)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def folder_files(folder: str | Path) -> list[Path]:
    """Regular files under ``folder`` (recursive; hidden files and folders such as .git or .cache left out)."""
    folder = Path(folder)
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not p.is_symlink() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )  # fmt: skip


def _hash_all(paths: Sequence[Path], root: Path | None) -> dict[str, Any]:
    started = time.perf_counter()
    files = []
    for p in paths:
        name = str(p.relative_to(root)) if root is not None else p.name
        try:
            files.append({"name": name, "size_bytes": p.stat().st_size, "sha256": sha256_file(p)})
        except OSError as err:  # provenance never fails the analysis: the file is listed with the reason
            files.append(
                {"name": name, "size_bytes": None, "sha256": None, "error": err.strerror or str(err)}
            )
    return {"files": files, "total_bytes": sum(f["size_bytes"] or 0 for f in files),
            "hash_seconds": round(time.perf_counter() - started, 3)}  # fmt: skip


class HashJob:
    """Files being hashed in a background thread; :meth:`result` joins it (so no thread is left behind
    when worker processes are forked afterwards)."""

    def __init__(self, paths: Sequence[Path], root: Path | None) -> None:
        self._out: dict[str, Any] | None = None
        self._thread = threading.Thread(
            target=self._run, args=(paths, root), name="spectra-hash", daemon=True
        )
        self._thread.start()

    def _run(self, paths: Sequence[Path], root: Path | None) -> None:
        self._out = _hash_all(paths, root)

    def result(self) -> dict[str, Any]:
        self._thread.join()
        assert self._out is not None
        return self._out


def hash_files(paths: Iterable[str | Path], root: str | Path | None = None) -> HashJob:
    """Start hashing ``paths`` in a background thread; the job's result is ``{"files": [{name,
    size_bytes, sha256}], "total_bytes", "hash_seconds"}`` (names relative to ``root`` when given)."""
    return HashJob([Path(p) for p in paths], None if root is None else Path(root))


def finish_inputs(inputs: Any) -> Any:
    """``inputs`` with every pending hashing job replaced by its result (waits for them)."""
    if isinstance(inputs, HashJob):
        return inputs.result()
    if isinstance(inputs, Mapping):
        return {k: finish_inputs(v) for k, v in inputs.items()}
    if isinstance(inputs, list | tuple):
        return [finish_inputs(v) for v in inputs]
    return inputs


def token_counts(batches: Sequence[Any]) -> dict[str, int | None]:
    """Sequences, tokens (attention mask ones, else all ids) and loss tokens (labels != -100) over batches
    of HF-style dicts; None where a batch does not say."""
    seqs = toks = loss = 0
    known = True
    for b in batches:
        if not isinstance(b, Mapping) or "input_ids" not in b:
            known = False
            continue
        ids = b["input_ids"]
        seqs += int(ids.shape[0])
        mask = b.get("attention_mask")
        toks += int(mask.sum()) if mask is not None else int(ids.numel())
        labels = b.get("labels")
        if labels is not None and labels.ndim == ids.ndim:
            loss += int((labels != -100).sum())
    if not known:
        return {"sequences": None, "tokens": None, "loss_tokens": None}
    return {"sequences": seqs, "tokens": toks, "loss_tokens": loss}


def hf_inputs(model_dir: str | Path, data: str | Path, *, task: str, tokenizer: str | None, batch_size: int,
              seq_len: int, batches: Sequence[Any]) -> dict[str, Any]:  # fmt: skip
    """A HF model folder + a data file or image folder: every file of the folder and of the data with SHA-256 (hashing
    started here, finished by :func:`finish_inputs`), task, tokenizer, batch size, sequence length, tokens."""
    model_dir, data = Path(model_dir), Path(data)
    return {
        "kind": "hf-folder",
        "model": {"path": str(model_dir.resolve()), **{"hashes": hash_files(folder_files(model_dir), model_dir)}},
        "data": {"path": str(data.resolve()), "name": data.name,
                 "hashes": hash_files(folder_files(data), data) if data.is_dir() else hash_files([data])},
        "task": task, "tokenizer": tokenizer, "batch_size": batch_size, "seq_len": seq_len,
        "num_batches": len(batches), **token_counts(batches),
    }  # fmt: skip


def factory_inputs(spec: str, weights: str | Path | None, batches: Sequence[Any]) -> dict[str, Any]:
    """A ``--model-factory`` workload: the factory (its file hashed when it is one), the weights file, and
    what the batches hold."""
    module = spec.rpartition(":")[0]
    out: dict[str, Any] = {"kind": "model-factory", "factory": spec, "num_batches": len(batches)}
    if module.endswith(".py") and Path(module).is_file():
        out["factory_file"] = hash_files([module])
    if weights is not None:
        out["weights"] = {"path": str(Path(weights).resolve()), "hashes": hash_files([weights])}
    out.update(token_counts(batches))
    return out


def generated_input(what: str, *, by: str, seed: int | None, path: str | None = None,
                    settings: Mapping[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """An input the tool made itself (demo data, the example checkpoint): what, which command, the seed,
    and where it was kept in the output folder (relative path; None when it was not kept)."""
    return {"kind": "generated", "created_by_tool": True, "what": what, "by": by, "seed": seed,
            "kept_at": path, "settings": dict(settings or {})}  # fmt: skip
