"""Finding the weights inside whatever a training script saved, and cleaning their names.

Researchers save ``{"state_dict": ...}``, ``{"model": ...}``, ``{step, model_state, optimizer_state}``,
Lightning checkpoints, EMA copies beside the model, ``module.``-prefixed DataParallel weights. The rules
(:func:`find_weights`), in order:

1. Optimizer state is recognised by its structure (a dict with ``state`` and ``param_groups``, the form of
   ``Optimizer.state_dict()``) or a key naming an optimizer, and set aside (never analysed as weights).
2. The weights root: starting at the top, a dict whose own tensors hold at least as many floating-point
   elements as any of its sub-entries is the state dict; otherwise descend into the sub-entry with the most
   floating-point elements, EMA/shadow copies last. Nested dicts below the root are flattened with ``.``.
   ``entry="ema"`` (a ``/``-separated key path) picks a root by hand.
3. Wrapper prefixes are removed when every name has them: ``module.`` (DataParallel/DDP), ``_orig_mod.``
   (torch.compile; also inside names), and ``model.`` only when the root was nested inside a training
   checkpoint (a Lightning module's ``self.model``), never from a flat file, where ``model.`` is part of
   Hugging Face names. The original key path of every tensor is kept (``TensorMeta.key``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hessian_spectra.errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = ["FoundWeights", "find_weights", "is_optimizer_state", "WRAPPER_PREFIXES"]

#: prefixes stripped whenever every name carries them (repeatedly, in any order)
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_EMA = re.compile(r"(^|_)(ema|shadow|averaged|swa|polyak)(_|$)", re.IGNORECASE)
_OPTIMIZER_KEY = re.compile(r"optim", re.IGNORECASE)
_MAX_NODES = 1_000_000
_MAX_DEPTH = 16


@dataclass
class FoundWeights:
    """The weights of a loaded checkpoint object: clean name -> tensor, and where each came from."""

    tensors: dict[str, Any]
    keys: dict[str, str]  # clean name -> original key path ("model_state/module.fc.weight")
    root: str  # key path of the weights root ("" for the top level)
    optimizers: list[tuple[str, dict]] = field(default_factory=list)  # (key path, optimizer state dict)
    notes: list[str] = field(default_factory=list)


def is_optimizer_state(obj: Any) -> bool:
    """True for ``torch.optim.Optimizer.state_dict()`` output: ``{"state": {...}, "param_groups": [...]}``."""
    return (
        isinstance(obj, dict)
        and isinstance(obj.get("state"), dict)
        and isinstance(obj.get("param_groups"), list)
    )


def _children(node: Any) -> Iterator[tuple[str, Any]]:
    """(key, value) of a dict or (index, value) of a list/tuple, lazily (a huge list is never copied)."""
    if isinstance(node, dict):
        return ((str(k), v) for k, v in node.items())
    if isinstance(node, list | tuple):
        return ((str(i), v) for i, v in enumerate(node))
    return iter(())


def _float_numel(t: torch.Tensor) -> int:
    try:
        if not (t.is_floating_point() or t.is_complex()):
            return 0
        n = 1
        for s in t.shape:
            n *= int(s)
        return n
    except Exception:  # nested tensors have no regular shape
        return 0


class _Tree:
    """Float-element counts of every container, computed once, iteratively (no recursion, bounded)."""

    def __init__(self, obj: Any, path: Path):
        import torch

        self.total: dict[int, int] = {}
        self.optimizers: list[tuple[str, dict]] = []
        order: list[Any] = []
        stack: list[tuple[Any, str, int]] = [(obj, "", 0)]
        seen = 0
        while stack:
            node, key, depth = stack.pop()
            seen += 1
            if seen > _MAX_NODES:
                raise InputError(path, f"checkpoint object has more than {_MAX_NODES} entries")
            if is_optimizer_state(node) or (key and _OPTIMIZER_KEY.search(key.rsplit("/", 1)[-1])):
                if is_optimizer_state(node):
                    self.optimizers.append((key, node))
                else:
                    for sub_key, sub in _children(node):
                        if is_optimizer_state(sub):
                            self.optimizers.append((f"{key}/{sub_key}", sub))
                self.total[id(node)] = 0
                continue
            if depth >= _MAX_DEPTH or not isinstance(node, dict | list | tuple):
                continue
            order.append(node)
            for k, v in _children(node):
                if isinstance(v, dict | list | tuple):
                    stack.append((v, f"{key}/{k}" if key else k, depth + 1))
        for node in reversed(order):  # children before parents
            total = 0
            for _, v in _children(node):
                total += _float_numel(v) if isinstance(v, torch.Tensor) else self.total.get(id(v), 0)
            self.total[id(node)] = total

    def direct(self, node: Any) -> int:
        import torch

        return sum(_float_numel(v) for _, v in _children(node) if isinstance(v, torch.Tensor))


#: keys under which training scripts keep a whole model (alternatives of each other, not parts of one model)
WRAPPER_KEYS = frozenset({
    "state_dict", "model", "model_state", "model_state_dict", "module", "net", "network", "params", "weights",
    "generator", "discriminator", "teacher", "student", "encoder_state_dict", "net_state_dict",
})  # fmt: skip


def _leaf_names(node: Any) -> set[tuple[str, tuple]]:
    """(name, shape) of every tensor below ``node``: equal sets mean copies of one model (EMA, SWA)."""
    import torch

    names, stack = set(), [(node, "", 0)]
    while stack and len(names) <= 100_000:
        cur, name, depth = stack.pop()
        for k, v in _children(cur):
            full = f"{name}.{k}" if name else k
            if isinstance(v, torch.Tensor):
                names.add((full, tuple(v.shape) if not v.is_nested else ()))
            elif isinstance(v, dict | list | tuple) and depth < _MAX_DEPTH:
                stack.append((v, full, depth + 1))
    return names


def _alternatives(kids: list[tuple[str, Any]]) -> bool:
    """True when sibling entries are whole models (wrapper/EMA keys, or copies with the same names and
    shapes) rather than parts of one model (``encoder``/``decoder``), which are flattened together."""
    if all(k.lower() in WRAPPER_KEYS or _EMA.search(k) for k, _ in kids):
        return True
    first = _leaf_names(kids[0][1])
    return all(_leaf_names(v) == first for _, v in kids[1:])


def _pick_root(tree: _Tree, obj: Any, entry: str | None, path: Path) -> tuple[Any, str, list[str]]:
    """The weights root, its key path and notes on the sub-entries passed over."""
    if entry is not None:
        node: Any = obj
        for part in [p for p in entry.split("/") if p]:
            sub = next((v for k, v in _children(node) if k == part), None)
            if sub is None or not isinstance(sub, dict | list | tuple):
                raise InputError(path, f"no nested entry '{entry}' in the checkpoint (stopped at '{part}')")
            node = sub
        return node, entry.strip("/"), []
    node, key, notes = obj, "", []
    for _ in range(_MAX_DEPTH):
        kids = [(k, v) for k, v in _children(node) if tree.total.get(id(v), 0) > 0]
        if not kids or tree.direct(node) >= max(tree.total[id(v)] for _, v in kids):
            return node, key, notes
        if len(kids) > 1 and not _alternatives(kids):
            return node, key, notes
        kids.sort(key=lambda kv: (bool(_EMA.search(kv[0])), -tree.total[id(kv[1])]))
        best_key, best = kids[0]
        best_path = f"{key}/{best_key}" if key else best_key
        for k, v in kids[1:]:
            notes.append(
                f"entry '{f'{key}/{k}' if key else k}' ({tree.total[id(v)]} floating-point elements) not analysed; "
                f"the weights were taken from '{best_path}' (choose another with entry='{f'{key}/{k}' if key else k}')"
            )
        node, key = best, best_path
    return node, key, notes


def _flatten(node: Any, root_key: str) -> tuple[dict[str, Any], dict[str, str], int]:
    """Tensors below ``node`` in file order, named with ``.`` joins; their original key paths; the count
    of non-tensor entries."""
    import torch

    tensors: dict[str, Any] = {}
    keys: dict[str, str] = {}
    skipped = 0
    stack: list[tuple[Any, str]] = [(iter(_children(node)), "")]
    while stack:
        items, name = stack[-1]
        step = next(items, None)
        if step is None:
            stack.pop()
            continue
        k, v = step
        full = f"{name}.{k}" if name else k
        if isinstance(v, torch.Tensor):
            tensors[full] = v
            keys[full] = f"{root_key}/{full}" if root_key else full
        elif isinstance(v, dict | list | tuple) and not is_optimizer_state(v) and len(stack) < _MAX_DEPTH:
            if not _OPTIMIZER_KEY.search(k):  # optimizer state in any other layout stays out of the weights
                stack.append((iter(_children(v)), full))
        else:
            skipped += 1
    return tensors, keys, skipped


def _strip_prefixes(
    tensors: dict[str, Any], keys: dict[str, str], *, nested: bool
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Remove wrapper prefixes that every name carries (see the module docstring); notes say which."""
    removed: list[str] = []
    names = list(tensors)
    while names:
        prefixes = list(WRAPPER_PREFIXES) + (["model."] if nested and "model." not in removed else [])
        hit = next((p for p in prefixes if all(n.startswith(p) and len(n) > len(p) for n in names)), None)
        if hit is None:
            break
        names = [n[len(hit) :] for n in names]
        removed.append(hit)
    inner = [n.replace("._orig_mod.", ".") for n in names]
    if inner != names and len(set(inner)) == len(inner):
        names = inner
        removed.append("._orig_mod. (inside names)")
    if not removed:
        return tensors, keys, []
    old = list(tensors)
    new_tensors = {n: tensors[o] for n, o in zip(names, old, strict=True)}
    new_keys = {n: keys[o] for n, o in zip(names, old, strict=True)}
    why = {"module.": "DataParallel/DDP", "_orig_mod.": "torch.compile", "model.": "training-module wrapper"}
    shown = ", ".join(f"'{p}' ({why.get(p, 'torch.compile')})" for p in removed)
    return (
        new_tensors,
        new_keys,
        [f"removed the wrapper prefix {shown} from every name; original keys are in the inventory"],
    )


def find_weights(obj: Any, path: Path, *, entry: str | None = None) -> FoundWeights:
    """The weights in a loaded checkpoint object (see the module docstring); InputError when there are none."""
    import torch

    if isinstance(obj, torch.Tensor):
        raise InputError(path, "the file holds a single tensor, not a state dict of named tensors")
    if not isinstance(obj, dict):
        raise InputError(path, f"not a state dict: the file holds a {type(obj).__name__}")
    tree = _Tree(obj, path)
    root, root_key, notes = _pick_root(tree, obj, entry, path)
    tensors, keys, skipped = _flatten(root, root_key)
    tensors, keys, strip_notes = _strip_prefixes(tensors, keys, nested=bool(root_key))
    if root_key:
        others = [str(k) for k in obj if str(k) != root_key.split("/")[0]]
        notes.insert(
            0,
            f"{path.name}: tensors taken from the nested entry '{root_key}'"
            + (
                f" (other top-level entries: {', '.join(others[:8])}{' ...' if len(others) > 8 else ''})"
                if others
                else ""
            ),
        )
    if skipped and tensors:
        notes.append(f"{path.name}: {skipped} non-tensor entries ignored")
    if tree.optimizers:
        paths = ", ".join(f"'{k}'" for k, _ in tree.optimizers[:4])
        notes.append(f"{path.name}: optimizer state at {paths} listed as such, not analysed as weights")
    return FoundWeights(tensors, keys, root_key, tree.optimizers, notes + strip_notes)
