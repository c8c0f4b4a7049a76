"""Named views into parameter tensors (whole tensor, rows, columns, heads, Q/K/V parts), blocks made of
several such parts (all tensors of a layer), and the block-diagonal Hessian operator over them.

:class:`BlockDiagonalOperator` builds each batch's first-order graph once (or reuses the operator's kept
graphs) and runs one PRUNED backward per block, ``autograd.grad(g_b, p_b, v_b)``: autograd only walks the
paths that reach that block's parameters, which is what makes many-block spectra affordable. A
:class:`CompositeBlock` gets one backward too: ``autograd.grad([g_part...], [p...], [v_part...])``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from hessian_spectra.errors import InputError
from torch import nn

__all__ = [
    "Block",
    "CompositeBlock",
    "AnyBlock",
    "parameter_blocks",
    "row_blocks",
    "column_blocks",
    "head_blocks",
    "qkv_blocks",
    "layer_key",
    "layer_blocks",
    "BlockDiagonalOperator",
    "RestrictedOperator",
]

#: ``get(param_name)`` returns that parameter's region of some flat or parameter-shaped tensor.
ParamGetter = Callable[[str], torch.Tensor]


@dataclass(frozen=True)
class Block:
    """A named slice ``[start, stop)`` along ``axis`` of parameter ``param`` (``axis=None``: whole tensor).

    ``view`` (optional) is a shape with the parameter's element count through which the tensor is seen
    before slicing: ``(numel,)`` for one block per coordinate, ``(prod(shape[:-1]), shape[-1])`` for rows
    of a 3-D tensor (Adam-mini's "last" layout). ``axis``/``start``/``stop`` then refer to that view.
    """

    name: str
    param: str
    shape: tuple[int, ...]
    axis: int | None = None
    start: int = 0
    stop: int | None = None
    kind: str = "tensor"
    view: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.view is not None:
            view = tuple(int(s) for s in self.view)
            if math.prod(view) != math.prod(self.shape):
                raise InputError(
                    None, f"block {self.name!r}: view {view} does not hold the {math.prod(self.shape)} "
                    f"elements of shape {self.shape}",
                )  # fmt: skip
            object.__setattr__(self, "view", None if view == self.shape else view)
        if self.axis is None:
            return
        seen = self.seen_shape
        if not 0 <= self.axis < len(seen):
            raise InputError(None, f"block {self.name!r}: axis {self.axis} out of range for shape {seen}")
        stop = seen[self.axis] if self.stop is None else self.stop
        if not 0 <= self.start < stop <= seen[self.axis]:
            raise InputError(
                None,
                f"block {self.name!r}: [{self.start}, {stop}) is not inside axis {self.axis} "
                f"of length {seen[self.axis]}",
            )
        object.__setattr__(self, "stop", stop)

    @property
    def seen_shape(self) -> tuple[int, ...]:
        """The shape the slice is taken from: ``view`` when set, else the parameter's shape."""
        return self.shape if self.view is None else self.view

    @property
    def block_shape(self) -> tuple[int, ...]:
        """Shape of the selected sub-tensor."""
        if self.axis is None:
            return self.seen_shape
        s = list(self.seen_shape)
        s[self.axis] = int(self.stop) - self.start  # type: ignore[arg-type]
        return tuple(s)

    @property
    def numel(self) -> int:
        """Number of parameters in the block (the block operator's dimension)."""
        return math.prod(self.block_shape)

    @property
    def param_numel(self) -> int:
        return math.prod(self.shape)

    @property
    def parts(self) -> tuple[Block, ...]:
        """The slices the block is made of: itself (see :class:`CompositeBlock` for several)."""
        return (self,)

    @property
    def params(self) -> tuple[str, ...]:
        """Names of the parameters the block touches."""
        return (self.param,)

    def index(self, x: torch.Tensor) -> torch.Tensor:
        """The block's view of a parameter-shaped tensor (differentiable; no copy)."""
        seen = self.seen_shape
        if x.shape != seen:
            try:
                x = x.view(seen)
            except RuntimeError:  # a non-contiguous gradient: read a copy (put targets are contiguous)
                x = x.reshape(seen)
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

    def gather(self, get: ParamGetter) -> torch.Tensor:
        """Flat block vector, reading the parameter's region through ``get`` (how operators index)."""
        return self.take(get(self.param))

    def scatter(self, v: torch.Tensor, get: ParamGetter) -> None:
        """Write flat ``v`` into the block region of ``get(param)`` (a writable parameter-sized view)."""
        self.put(v, into=get(self.param).view(self.shape))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["view"] = None if self.view is None else list(self.view)
        d["numel"] = self.numel
        return d


@dataclass(frozen=True)
class CompositeBlock:
    """A block made of several parts (whole tensors and/or slices, of one or several parameters).

    Its vector is the parts' flat vectors concatenated in order; the block operator applies the
    principal sub-matrix of the Hessian on all the parts' coordinates (cross terms between parts
    included) with one pruned backward. Parts must not overlap: slices of one parameter must share
    axis and view and have disjoint ranges; a whole-tensor part must be the parameter's only part.
    """

    name: str
    parts: tuple[Block, ...]
    kind: str = "group"

    def __post_init__(self) -> None:
        parts = tuple(self.parts)
        object.__setattr__(self, "parts", parts)
        if not parts:
            raise InputError(None, f"block {self.name!r}: no parts")
        by_param: dict[str, list[Block]] = {}
        for p in parts:
            if not isinstance(p, Block):
                raise InputError(None, f"block {self.name!r}: parts must be Blocks, got {type(p).__name__}")
            by_param.setdefault(p.param, []).append(p)
        for param, ps in by_param.items():
            if len(ps) == 1:
                continue
            if any(p.axis is None for p in ps) or len({(p.axis, p.view, p.shape) for p in ps}) > 1:
                raise InputError(
                    None, f"block {self.name!r}: parts of {param!r} overlap or slice it along different axes"
                )
            spans = sorted((p.start, int(p.stop)) for p in ps)  # type: ignore[arg-type]
            if any(a1 < b0 for (_, b0), (a1, _) in zip(spans, spans[1:], strict=False)):
                raise InputError(None, f"block {self.name!r}: parts of {param!r} overlap")

    @property
    def numel(self) -> int:
        """Number of parameters in the block (the block operator's dimension)."""
        return sum(p.numel for p in self.parts)

    @property
    def params(self) -> tuple[str, ...]:
        """Names of the parameters the block touches, in first-appearance order."""
        return tuple(dict.fromkeys(p.param for p in self.parts))

    @property
    def bounds(self) -> list[tuple[int, int]]:
        """``[a, b)`` of each part inside the block vector."""
        out, a = [], 0
        for p in self.parts:
            out.append((a, a + p.numel))
            a += p.numel
        return out

    def split(self, v: torch.Tensor) -> list[torch.Tensor]:
        """The parts' pieces (views) of a flat block vector."""
        if v.numel() != self.numel:
            raise ValueError(f"block {self.name!r}: expected {self.numel} values, got {v.numel()}")
        flat = v.reshape(-1)
        return [flat[a:b] for a, b in self.bounds]

    def gather(self, get: ParamGetter) -> torch.Tensor:
        """Flat block vector: each part read from ``get(part.param)``, concatenated."""
        return torch.cat([p.take(get(p.param)) for p in self.parts])

    def scatter(self, v: torch.Tensor, get: ParamGetter) -> None:
        """Write flat ``v`` part by part into ``get(part.param)`` (writable parameter-sized views)."""
        for p, piece in zip(self.parts, self.split(v), strict=True):
            p.put(piece, into=get(p.param).view(p.shape))

    def take(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Flat block vector from a mapping parameter name -> parameter-shaped (or flat) tensor."""
        return self.gather(lambda n: tensors[n])

    def put(self, v: torch.Tensor, into: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Parameter name -> parameter-shaped tensor holding ``v`` on the block (zeros elsewhere unless ``into``)."""
        out = dict(into) if into is not None else {}
        for p in self.parts:
            if p.param not in out:
                out[p.param] = torch.zeros(p.shape, dtype=v.dtype, device=v.device)
        self.scatter(v, lambda n: out[n])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "numel": self.numel, "params": list(self.params),
            "parts": [p.to_dict() for p in self.parts],
        }  # fmt: skip


#: Either kind of block; both have ``name``, ``kind``, ``numel``, ``parts``, ``params``, ``gather``/``scatter``.
AnyBlock = Block | CompositeBlock


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


@dataclass(frozen=True)
class _Plan:
    """Where a block's parts live: (part, parameter index, [a, b) in the block vector), distinct leaves."""

    parts: tuple[tuple[Block, int, int, int], ...]
    leaves: tuple[int, ...]


def check_block(block: AnyBlock, shapes: Mapping[str, Sequence[int]]) -> None:
    """Raise :class:`InputError` unless every part of ``block`` is a differentiated parameter of its shape."""
    if not isinstance(block, Block | CompositeBlock):
        raise InputError(None, f"not a block: {type(block).__name__}")
    for p in block.parts:
        if p.param not in shapes:
            raise InputError(
                None, f"block {block.name!r}: parameter {p.param!r} is not one the operator differentiates"
            )
        if tuple(shapes[p.param]) != p.shape:
            raise InputError(
                None, f"block {block.name!r}: shape {p.shape} != parameter shape {tuple(shapes[p.param])}"
            )


class BlockDiagonalOperator:
    """``MultiOperator`` of the diagonal blocks H_bb of a :class:`~hessian_spectra.curvature.operators.HessianOperator`.

    ``matvec_many(vs)`` returns ``[H_bb v_b]`` with one graph build per batch (none in reuse mode) and one
    pruned backward per non-None block, whether the block is one slice or a :class:`CompositeBlock` of
    several. ``num_matvecs`` counts lockstep calls; ``num_block_hvps`` counts per-block, per-batch
    backward passes.
    """

    def __init__(self, operator: Any, blocks: Sequence[AnyBlock]):
        if not hasattr(operator, "_for_each_graph"):
            raise InputError(
                None, "BlockDiagonalOperator needs a HessianOperator (one with first-order graphs)"
            )
        blocks = list(blocks)
        if not blocks:
            raise InputError(None, "no blocks given")
        shapes = operator.param_shapes
        plans = []
        for b in blocks:
            check_block(b, shapes)
            parts, a = [], 0
            for p in b.parts:
                parts.append((p, operator._param_index[p.param], a, a + p.numel))
                a += p.numel
            plans.append(_Plan(tuple(parts), tuple(dict.fromkeys(j for _, j, _, _ in parts))))
        self.operator = operator
        self.blocks = blocks
        self.names = [b.name for b in blocks]
        self.dims = [b.numel for b in blocks]
        self.dtype = operator.dtype
        self.device = operator.device
        self._plans = plans
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
            active.append((i, self._plans[i], v.to(device=self.device, dtype=self.dtype)))

        def run() -> tuple[dict[int, torch.Tensor], int]:
            acc = {i: torch.zeros(self.dims[i], dtype=self.dtype, device=self.device) for i, _, _ in active}
            count = 0

            def per_batch(weight: float, grads: list[torch.Tensor], leaves: list[torch.Tensor]) -> None:
                nonlocal count
                for i, plan, v in active:
                    outs, grad_outs = [], []
                    for part, j, a, b in plan.parts:
                        g = part.index(grads[j])
                        if g.requires_grad:  # the piece goes to the parameter's device (model-parallel)
                            outs.append(g)
                            grad_outs.append(v[a:b].view(part.block_shape).to(g.device))
                    if not outs:
                        continue
                    hs = torch.autograd.grad(
                        outs, [leaves[j] for j in plan.leaves], grad_outputs=grad_outs, retain_graph=True,
                        allow_unused=True,
                    )  # fmt: skip
                    count += 1
                    by_leaf = dict(zip(plan.leaves, hs, strict=True))
                    for part, j, a, b in plan.parts:
                        h = by_leaf[j]
                        if h is not None:
                            acc[i][a:b].add_(part.take(h).to(self.device), alpha=weight)

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

    def __init__(self, operator: Any, block: AnyBlock):
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
