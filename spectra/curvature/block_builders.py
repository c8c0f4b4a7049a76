"""Block constructors: one block per tensor, row or column ranges, attention heads, the Q/K/V parts of a
fused projection and one composite block per numbered layer, read from a model, an operator or a
name -> shape mapping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from hessian_spectra.curvature.blocks import AnyBlock, Block, CompositeBlock
from hessian_spectra.errors import InputError
from torch import nn

__all__ = [
    "parameter_blocks",
    "row_blocks",
    "column_blocks",
    "head_blocks",
    "qkv_blocks",
    "layer_key",
    "layer_blocks",
]


def _shapes(source: Any) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape for a model, an operator (``param_shapes``) or a mapping."""
    if isinstance(source, nn.Module):
        return {n: tuple(p.shape) for n, p in source.named_parameters()}
    shapes = getattr(source, "param_shapes", None)
    if isinstance(shapes, Mapping):
        return {n: tuple(s) for n, s in shapes.items()}
    if isinstance(source, Mapping):
        return {n: tuple(s.shape if isinstance(s, torch.Tensor) else s) for n, s in source.items()}
    raise InputError(None, f"cannot read parameter shapes from a {type(source).__name__}")


def _shape_of(source: Any, param: str) -> tuple[int, ...]:
    shapes = _shapes(source)
    if param not in shapes:
        raise InputError(None, f"unknown parameter {param!r} (have: {', '.join(list(shapes)[:8])}...)")
    return shapes[param]


def parameter_blocks(source: Any, params: Sequence[str] | None = None) -> list[Block]:
    """One whole-tensor block per parameter (default: the operator's parameters, or all trainable ones)."""
    shapes = _shapes(source)
    if params is None:
        names = getattr(source, "param_names", None)
        if names is None and isinstance(source, nn.Module):
            names = [n for n, p in source.named_parameters() if p.requires_grad]
        params = list(names) if names is not None else list(shapes)
    out = []
    for n in params:
        if n not in shapes:
            raise InputError(None, f"unknown parameter {n!r}")
        out.append(Block(name=n, param=n, shape=shapes[n]))
    return out


def _axis_blocks(
    source: Any, param: str, axis: int, size: int | None, bounds: Sequence[int] | None, kind: str
):
    shape = _shape_of(source, param)
    if axis >= len(shape):
        raise InputError(None, f"{param!r} of shape {shape} has no axis {axis}")
    n = shape[axis]
    if bounds is None:
        if size is None or size <= 0:
            raise InputError(None, "give a positive size or explicit bounds")
        bounds = list(range(0, n, size)) + [n]
    bounds = [int(b) for b in bounds]
    if bounds[0] != 0 or bounds[-1] != n or any(a >= b for a, b in zip(bounds, bounds[1:], strict=False)):
        raise InputError(None, f"bounds {bounds} must increase from 0 to {n}")
    label = "rows" if axis == 0 else "cols"
    return [
        Block(f"{param}[{label} {a}:{b}]", param, shape, axis, a, b, kind)
        for a, b in zip(bounds, bounds[1:], strict=False)
    ]


def row_blocks(source: Any, param: str, size: int | None = None, bounds: Sequence[int] | None = None):
    """Blocks of ``size`` rows (or rows between consecutive ``bounds``) of one parameter."""
    return _axis_blocks(source, param, 0, size, bounds, "rows")


def column_blocks(source: Any, param: str, size: int | None = None, bounds: Sequence[int] | None = None):
    """Blocks of ``size`` columns (or columns between consecutive ``bounds``) of one parameter."""
    return _axis_blocks(source, param, 1, size, bounds, "columns")


def head_blocks(
    source: Any,
    param: str,
    n_heads: int,
    head_dim: int | None = None,
    *,
    axis: int = 0,
    offset: int = 0,
    prefix: str | None = None,
) -> list[Block]:
    """One block per attention head: slices ``offset + [h*head_dim, (h+1)*head_dim)`` along ``axis``.

    For an ``(heads*head_dim, in)`` nn.Linear projection use ``axis=0``; for GPT-2's Conv1D ``(in, out)``
    layout use ``axis=1``; ``offset`` selects a part of a fused QKV tensor.
    """
    shape = _shape_of(source, param)
    length = shape[axis] - offset
    if head_dim is None:
        if length % n_heads:
            raise InputError(None, f"{param!r}: axis {axis} length {length} not divisible by {n_heads} heads")
        head_dim = length // n_heads
    if offset + n_heads * head_dim > shape[axis]:
        raise InputError(None, f"{param!r}: {n_heads} heads of {head_dim} exceed axis {axis} ({shape[axis]})")
    base = prefix or param
    return [
        Block(
            f"{base}[head {h}]",
            param,
            shape,
            axis,
            offset + h * head_dim,
            offset + (h + 1) * head_dim,
            "head",
        )
        for h in range(n_heads)
    ]


def qkv_blocks(
    source: Any,
    param: str,
    sizes: Sequence[int] | None = None,
    *,
    axis: int = 0,
    names: Sequence[str] = ("q", "k", "v"),
) -> list[Block]:
    """The Q, K and V parts of a fused projection (default: three equal parts along ``axis``).

    PyTorch ``in_proj_weight`` is ``(3d, d)``: ``axis=0``; GPT-2 ``c_attn.weight`` is ``(d, 3d)``: ``axis=1``.
    """
    shape = _shape_of(source, param)
    n = shape[axis]
    if sizes is None:
        if n % len(names):
            raise InputError(None, f"{param!r}: axis {axis} length {n} not divisible into {len(names)} parts")
        sizes = [n // len(names)] * len(names)
    if len(sizes) != len(names) or sum(sizes) != n:
        raise InputError(None, f"{param!r}: part sizes {list(sizes)} must sum to {n} with one name each")
    out, a = [], 0
    for name, s in zip(names, sizes, strict=True):
        out.append(Block(f"{param}[{name}]", param, shape, axis, a, a + int(s), "qkv"))
        a += int(s)
    return out


def layer_key(name: str) -> str | None:
    """The dotted prefix of ``name`` up to its first integer component (``model.layers.3.mlp.w`` ->
    ``model.layers.3``), or None when no component is an integer (embeddings, final norm, head)."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return None


def layer_blocks(source: Any, params: Sequence[str] | None = None) -> list[AnyBlock]:
    """One :class:`CompositeBlock` per layer (all parameters sharing a :func:`layer_key`, e.g. every
    tensor of ``model.layers.3``); parameters outside numbered layers stay one whole-tensor block each.

    Blocks come in the order of each block's first parameter. Layers are keyed by the whole prefix, so
    ``encoder.layer.0`` and ``decoder.layer.0`` are different blocks.
    """
    tensors = parameter_blocks(source, params)
    groups: dict[str, list[Block]] = {}
    order: list[str | Block] = []
    for b in tensors:
        key = layer_key(b.param)
        if key is None:
            order.append(b)
            continue
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(b)
    return [
        CompositeBlock(item, tuple(groups[item]), "layer") if isinstance(item, str) else item
        for item in order
    ]
