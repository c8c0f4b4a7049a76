"""Operators on the diagonal blocks H_bb of a Hessian operator: the lockstep block-diagonal operator and
one block as a ``LinearOperator``, plus the check that a block fits an operator's parameters.

:class:`BlockDiagonalOperator` builds each batch's first-order graph once (or reuses the operator's kept
graphs) and runs one PRUNED backward per block, ``autograd.grad(g_b, p_b, v_b)``: autograd only walks the
paths that reach that block's parameters, which is what makes many-block spectra affordable. A
:class:`~hessian_spectra.curvature.blocks.CompositeBlock` gets one backward too:
``autograd.grad([g_part...], [p...], [v_part...])``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from hessian_spectra.curvature.blocks import AnyBlock, Block, CompositeBlock
from hessian_spectra.errors import InputError

__all__ = ["BlockDiagonalOperator", "RestrictedOperator", "check_block"]


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
    """``MultiOperator`` of the diagonal blocks H_bb of a :class:`~hessian_spectra.curvature.hessian.HessianOperator`.

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
