"""Reading ``--data``: texts (one per line, or JSONL ``text`` with an optional ``label``), sentence pairs
(JSONL ``anchor``/``positive`` or ``text``/``pair``, or adjacent lines of a text file) and image folders (one
sub-folder per class). Every problem is an InputError naming the file and the line."""

from __future__ import annotations

import json
from pathlib import Path

from hessian_spectra.errors import InputError

__all__ = ["read_records", "read_texts", "read_pairs", "list_images", "IMAGE_SUFFIXES", "MAX_DATA_BYTES"]

#: a data file is read whole: refuse what cannot be a sensible sample of text
MAX_DATA_BYTES = 512 * 2**20
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
PAIR_KEYS = (("anchor", "positive"), ("text", "pair"))


def _lines(path: str | Path) -> tuple[Path, list[str]]:
    path = Path(path)
    if not path.is_file():
        raise InputError(
            path,
            "data file not found" if not path.is_dir() else "expected a text or JSONL file, got a folder",
        )
    try:
        if path.stat().st_size > MAX_DATA_BYTES:
            raise InputError(path, f"data file larger than {MAX_DATA_BYTES // 2**20} MiB; pass a sample")
        return path, path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(path, "data file is not UTF-8 text") from None
    except OSError as exc:
        raise InputError(path, f"cannot read the data file: {exc.strerror or exc}") from None


def _json_line(path: Path, i: int, line: str) -> dict:
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError) as err:
        raise InputError(path, f"line {i} is not JSON ({' '.join(str(err).split())[:120]})") from None
    if not isinstance(rec, dict):
        raise InputError(path, f"line {i}: expected a JSON object")
    return rec


def read_records(path: str | Path) -> list[tuple[str, int | None]]:
    """(text, label or None) per line of a .txt or .jsonl file."""
    path, lines = _lines(path)
    out: list[tuple[str, int | None]] = []
    if path.suffix in (".jsonl", ".json"):
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            rec = _json_line(path, i, line)
            if not isinstance(rec.get("text"), str):
                raise InputError(path, f"line {i}: expected an object with a 'text' string")
            label = rec.get("label")
            if label is not None and (type(label) is not int or label < 0):
                raise InputError(
                    path, f"line {i}: 'label' must be a non-negative integer class index, got {label!r}"
                )
            out.append((rec["text"], label))
    else:
        out = [(line, None) for line in lines if line.strip()]
    if not out:
        raise InputError(path, "no text found")
    return out


def read_texts(path: str | Path) -> list[str]:
    """Non-empty lines of a text file, or the ``text`` field of every JSONL record (``label`` kept aside)."""
    return [t for t, _ in read_records(path)]


def read_pairs(path: str | Path) -> tuple[list[tuple[str, str]], str]:
    """(anchor, positive) pairs and how they were read: JSONL ``{"anchor", "positive"}`` or ``{"text",
    "pair"}`` per line, or adjacent non-empty lines of a text file (1-2, 3-4, ...; an odd last line is dropped)."""
    path, lines = _lines(path)
    pairs: list[tuple[str, str]] = []
    if path.suffix in (".jsonl", ".json"):
        how = ""
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            rec = _json_line(path, i, line)
            keys = next(
                (k for k in PAIR_KEYS if isinstance(rec.get(k[0]), str) and isinstance(rec.get(k[1]), str)),
                None,
            )
            if keys is None:
                raise InputError(
                    path, f'line {i}: expected {{"anchor", "positive"}} or {{"text", "pair"}} strings'
                )
            pairs.append((rec[keys[0]], rec[keys[1]]))
            how = how or f"JSONL {keys[0]}/{keys[1]} pairs"
    else:
        texts = [line for line in lines if line.strip()]
        pairs = list(zip(texts[0::2], texts[1::2], strict=False))
        how = "adjacent lines of a text file" + (" (odd last line dropped)" if len(texts) % 2 else "")
    if len(pairs) < 2:
        raise InputError(path, f"{len(pairs)} pair(s): the in-batch contrastive loss needs at least 2 pairs")
    return pairs, how


def list_images(folder: str | Path) -> tuple[list[tuple[Path, str]], list[str]]:
    """(image path, class folder name) for every image one level below ``folder``, and the class names
    (sorted). Files elsewhere are ignored; symlinks are not followed out of the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(
            folder, "image classification needs --data to be a folder with one sub-folder of images per class"
        )
    classes = sorted(
        p.name for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
    )
    items: list[tuple[Path, str]] = []
    for cls in classes:
        for f in sorted((folder / cls).iterdir()):
            if f.is_file() and not f.is_symlink() and f.suffix.lower() in IMAGE_SUFFIXES:
                items.append((f, cls))
    if not classes or not items:
        raise InputError(
            folder, f"no images found in class sub-folders (looked for {', '.join(IMAGE_SUFFIXES)})"
        )
    return items, classes
