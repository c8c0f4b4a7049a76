"""Named views into parameter tensors (whole tensor, rows, columns, heads, Q/K/V parts) and the
block-diagonal Hessian operator over them.

:class:`BlockDiagonalOperator` builds each batch's first-order graph once (or reuses the operator's kept
graphs) and runs one PRUNED backward per block, ``autograd.grad(g_b, p_b, v_b)``: autograd only walks the
paths that reach that block's parameter, which is what makes many-block spectra affordable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from spectra.errors import InputError

__all__ = [
    "Block",
    "parameter_blocks",
    "row_blocks",
    "column_blocks",
    "head_blocks",
    "qkv_blocks",
    "BlockDiagonalOperator",
    "RestrictedOperator",
]


@dataclass(frozen=True)
class Block:
    """A named slice ``[start, stop)`` along ``axis`` of parameter ``param`` (``axis=None``: whole tensor)."""

    name: str
    param: str
    shape: tuple[int, ...]
    axis: int | None = None
    start: int = 0
    stop: int | None = None
    kind: str = "tensor"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.axis is None:
            return
        if not 0 <= self.axis < len(self.shape):
            raise InputError(
                None, f"block {self.name!r}: axis {self.axis} out of range for shape {self.shape}"
            )
        stop = self.shape[self.axis] if self.stop is None else self.stop
        if not 0 <= self.start < stop <= self.shape[self.axis]:
            raise InputError(
                None,
                f"block {self.name!r}: [{self.start}, {stop}) is not inside axis {self.axis} "
                f"of length {self.shape[self.axis]}",
            )
        object.__setattr__(self, "stop", stop)

    @property
    def block_shape(self) -> tuple[int, ...]:
        """Shape of the selected sub-tensor."""
        if self.axis is None:
            return self.shape
        s = list(self.shape)
        s[self.axis] = int(self.stop) - self.start  # type: ignore[arg-type]
        return tuple(s)

    @property
    def numel(self) -> int:
        """Number of parameters in the block (the block operator's dimension)."""
        return math.prod(self.block_shape)

    @property
    def param_numel(self) -> int:
        return math.prod(self.shape)

    def index(self, x: torch.Tensor) -> torch.Tensor:
        """The block's view of a parameter-shaped tensor (differentiable; no copy)."""
        x = x.view(self.shape) if x.shape != self.shape else x
        if self.axis is None:
            return x
        return x.narrow(self.axis, self.start, int(self.stop) - self.start)  # type: ignore[arg-type]

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """Flat block vector from a parameter-shaped (or flat, parameter-sized) tensor."""
        if x.numel() != self.param_numel:
            raise ValueError(f"block {self.name!r}: expected {self.param_numel} values, got {x.numel()}")
        return self.index(x.reshape(self.shape)).reshape(-1)

    def put(self, v: torch.Tensor, into: torch.Tensor | None = None) -> torch.Tensor:
        """Parameter-shaped tensor holding flat ``v`` in the block region (zeros elsewhere unless ``into``)."""
        if v.numel() != self.numel:
            raise ValueError(f"block {self.name!r}: expected {self.numel} values, got {v.numel()}")
        out = torch.zeros(self.shape, dtype=v.dtype, device=v.device) if into is None else into
        self.index(out).copy_(v.reshape(self.block_shape))
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["numel"] = self.numel
        return d


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


class BlockDiagonalOperator:
    """``MultiOperator`` of the diagonal blocks H_bb of a :class:`~spectra.operators.HessianOperator`.

    ``matvec_many(vs)`` returns ``[H_bb v_b]`` with one graph build per batch (none in reuse mode) and one
    pruned backward per non-None block. ``num_matvecs`` counts lockstep calls; ``num_block_hvps`` counts
    per-block, per-batch backward passes.
    """

    def __init__(self, operator: Any, blocks: Sequence[Block]):
        if not hasattr(operator, "_for_each_graph"):
            raise InputError(
                None, "BlockDiagonalOperator needs a HessianOperator (one with first-order graphs)"
            )
        blocks = list(blocks)
        if not blocks:
            raise InputError(None, "no blocks given")
        shapes = operator.param_shapes
        for b in blocks:
            if b.param not in shapes:
                raise InputError(
                    None, f"block {b.name!r}: parameter {b.param!r} is not one the operator differentiates"
                )
            if tuple(shapes[b.param]) != b.shape:
                raise InputError(
                    None, f"block {b.name!r}: shape {b.shape} != parameter shape {tuple(shapes[b.param])}"
                )
        self.operator = operator
        self.blocks = blocks
        self.names = [b.name for b in blocks]
        self.dims = [b.numel for b in blocks]
        self.dtype = operator.dtype
        self.device = operator.device
        self._count = 0
        self._block_hvps = 0

    @property
    def num_matvecs(self) -> int:
        return self._count

    @property
    def num_block_hvps(self) -> int:
        return self._block_hvps

    def matvec_many(self, vs: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
        if len(vs) != len(self.blocks):
            raise ValueError(f"expected {len(self.blocks)} vectors, got {len(vs)}")
        op = self.operator
        active = []
        for i, (b, v) in enumerate(zip(self.blocks, vs, strict=True)):
            if v is None:
                continue
            if v.shape != (b.numel,):
                raise ValueError(
                    f"block {b.name!r}: expected a vector of shape ({b.numel},), got {tuple(v.shape)}"
                )
            active.append((i, b, op._param_index[b.param], v.to(device=self.device, dtype=self.dtype)))

        def run() -> tuple[dict[int, torch.Tensor], int]:
            acc = {i: torch.zeros(b.numel, dtype=self.dtype, device=self.device) for i, b, _, _ in active}
            count = 0

            def per_batch(weight: float, grads: list[torch.Tensor], leaves: list[torch.Tensor]) -> None:
                nonlocal count
                for i, b, j, v in active:
                    g = b.index(grads[j])
                    if not g.requires_grad:
                        continue
                    (h,) = torch.autograd.grad(
                        g, leaves[j], grad_outputs=v.view(b.block_shape), retain_graph=True, allow_unused=True
                    )
                    count += 1
                    if h is not None:
                        acc[i].add_(b.take(h), alpha=weight)

            op._for_each_graph(per_batch)
            return acc, count

        acc, count = op._with_attention_fallback(run) if active else ({}, 0)
        self._count += 1
        self._block_hvps += count
        out: list[torch.Tensor | None] = [None] * len(self.blocks)
        for i, v in acc.items():
            out[i] = v / op.total_weight
        return out


class RestrictedOperator:
    """``LinearOperator`` for one diagonal block H_bb (pruned backward when the parent keeps graphs)."""

    def __init__(self, operator: Any, block: Block):
        self.operator = operator
        self.block = block
        self.name = block.name
        self.dim = block.numel
        self.dtype = operator.dtype
        self.device = operator.device
        self._count = 0
        self._multi = (
            BlockDiagonalOperator(operator, [block]) if hasattr(operator, "_for_each_graph") else None
        )

    @property
    def num_matvecs(self) -> int:
        return self._count

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        if v.shape != (self.dim,):
            raise ValueError(f"expected a vector of shape ({self.dim},), got {tuple(v.shape)}")
        self._count += 1
        if self._multi is not None:
            out = self._multi.matvec_many([v])[0]
            assert out is not None
            return out
        return self.operator.take(self.block, self.operator.matvec(self.operator.embed(self.block, v)))
