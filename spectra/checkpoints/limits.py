"""The readers' limits on hostile input, checked before anything is allocated, and the checks they share.

Every cap is a module constant (documented in README "Bad input" / Readers) so a reviewer sees one number:
headers and JSON files are bounded in bytes, entries and nesting depth; names listed in an index must be
plain file names in its folder; a tensor's in-memory size is bounded (:func:`max_tensor_bytes`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hessian_spectra.errors import InputError

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_HEADER_DEPTH",
    "MAX_TENSORS_PER_FILE",
    "MAX_TENSORS",
    "MAX_SHARDS",
    "MAX_NDIM",
    "MAX_NAME_BYTES",
    "DEFAULT_MAX_TENSOR_BYTES",
    "max_tensor_bytes",
    "loads_limited",
    "read_json_limited",
    "check_plain_name",
    "exact_int",
    "show_name",
    "human_bytes",
]

#: safetensors header (the format's own cap is 100 MB).
MAX_HEADER_BYTES = 100 * 2**20
#: config.json, *.index.json, GGUF-free JSON side files.
MAX_JSON_BYTES = 64 * 2**20
#: nesting depth of config.json / index files (real HF configs nest 3-5 levels).
MAX_JSON_DEPTH = 32
#: nesting depth of a safetensors header ({name: {"shape": [...]}} is 3).
MAX_HEADER_DEPTH = 4
#: tensors in one file (the largest public checkpoints hold ~140k tensors over all their shards).
MAX_TENSORS_PER_FILE = 200_000
#: tensors in one checkpoint (all shards together).
MAX_TENSORS = 500_000
#: distinct shard files an index may list.
MAX_SHARDS = 10_000
#: dimensions of one tensor (torch allows 64; no weight has more than 6).
MAX_NDIM = 16
#: bytes of one file name (ext4, xfs, btrfs, APFS and NTFS stop at 255).
MAX_NAME_BYTES = 255
#: bytes one tensor may occupy once read (its loaded dtype; float32 for dequantized GGUF).
DEFAULT_MAX_TENSOR_BYTES = 32 * 2**30
_ENV_MAX_TENSOR = "SPECTRA_MAX_TENSOR_BYTES"


def max_tensor_bytes() -> int:
    """The per-tensor cap: ``$SPECTRA_MAX_TENSOR_BYTES`` when set to a positive integer, else 32 GiB."""
    raw = os.environ.get(_ENV_MAX_TENSOR, "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    return DEFAULT_MAX_TENSOR_BYTES


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``: sizes in messages, in words a reader can check."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def _depth(obj: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in node)
    return deepest


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads_limited(raw: bytes | str, where: str | Path, what: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` that never raises anything but InputError: no RecursionError on deep nesting, no
    ``NaN``/``Infinity`` constants, nesting refused beyond ``max_depth``."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        obj = json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise InputError(where, f"{what} is nested too deeply (more than {max_depth} levels)") from None
    except (UnicodeDecodeError, ValueError) as exc:
        msg = " ".join(str(exc).split())[:200]
        raise InputError(where, f"cannot parse {what} JSON: {msg}") from None
    if _depth(obj) > max_depth:
        raise InputError(where, f"{what} is nested too deeply (more than {max_depth} levels)")
    return obj


def read_json_limited(
    path: Path, what: str, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH
) -> Any:
    """Read and parse a JSON side file (config, index) with the size and depth caps."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise InputError(
                path,
                f"{what} is {human_bytes(size)}, above the {human_bytes(max_bytes)} limit for JSON files",
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot read {what}: {exc.strerror or exc}") from None
    return loads_limited(raw, path, what, max_depth=max_depth)


def check_plain_name(name: Any, where: str | Path, what: str) -> str:
    """``name`` must be a plain file name (no folder part, not ``.``/``..``, no control characters, at
    most 255 bytes). Decided from the text alone, so the message is the same whether a file exists."""
    if not isinstance(name, str) or not name:
        raise InputError(where, f"{what} must be a non-empty file name string")
    shown = f"'{show_name(name)}'"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InputError(where, f"{what} {shown} is longer than {MAX_NAME_BYTES} bytes")
    if name in (".", "..") or "/" in name or "\\" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InputError(
            where, f"{what} {shown} is not a plain file name in the same folder (no paths, no '..')"
        )
    return name


def show_name(name: object, limit: int = 80) -> str:
    """A name as it may appear in a one-line message: control characters escaped, at most ``limit`` chars."""
    text = str(name)
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def exact_int(value: Any, *, low: int = 0, high: int | None = None) -> int | None:
    """``value`` if it is a JSON integer (not a bool, not a float such as 4.0 or 1e400) in [low, high]."""
    if type(value) is not int or value < low or (high is not None and value > high):
        return None
    return value
