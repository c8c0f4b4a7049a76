"""Exact diagonal Hessian blocks H_bb from their columns: several unit vectors per pruned backward.

A block of n parameters has n columns; with the first-order graph of each batch built once (or kept by
the operator), ``autograd.grad(g_b, p_b, E, is_grads_batched=True)`` returns H_bb E for a chunk of unit
vectors E in one vectorised backward that walks only the paths reaching the block's parameters (the
pruned backward of :mod:`hessian_spectra.curvature.block_operators`). Where vmap cannot run the backward,
the chunk is done one column at a time (noted). The eigenvalues come from ``eigvalsh`` in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from hessian_spectra.curvature.block_operators import BlockDiagonalOperator
from hessian_spectra.curvature.blocks import AnyBlock
from hessian_spectra.krylov.exact import ExactSpectrum, symmetric_eigvalsh

__all__ = ["block_matrices", "exact_block_spectra"]


def _columns(
    plan: Any, grads: list[torch.Tensor], leaves: list[torch.Tensor], E: torch.Tensor, batched: bool
) -> torch.Tensor | None:
    """H_bb E (``(k, n)`` rows = columns) of one batch for unit vectors ``E`` (``(k, n)``); None when
    the block does not reach the loss."""
    k = E.shape[0]
    outs, grad_outs = [], []
    for part, j, a, b in plan.parts:
        g = part.index(grads[j])
        if g.requires_grad:
            outs.append(g)
            grad_outs.append(E[:, a:b].reshape(k, *part.block_shape).to(g.device))
    if not outs:
        return None
    targets = [leaves[j] for j in plan.leaves]
    if batched:
        hs = torch.autograd.grad(
            outs, targets, grad_outputs=grad_outs, retain_graph=True, allow_unused=True, is_grads_batched=True
        )
        per_leaf = [None if h is None else list(h) for h in hs]
    else:
        cols = [
            torch.autograd.grad(outs, targets, grad_outputs=[t[i] for t in grad_outs], retain_graph=True,
                                allow_unused=True)
            for i in range(k)
        ]  # fmt: skip
        per_leaf = [None if cols[0][t] is None else [c[t] for c in cols] for t in range(len(targets))]
    by_leaf = dict(zip(plan.leaves, per_leaf, strict=True))
    n = E.shape[1]
    rows = torch.zeros(k, n, dtype=E.dtype, device=E.device)
    for part, j, a, b in plan.parts:
        hl = by_leaf[j]
        if hl is not None:
            rows[:, a:b] = torch.stack([part.take(h) for h in hl]).to(device=E.device, dtype=E.dtype)
    return rows


def _unit_rows(c0: int, c1: int, n: int, like: Any) -> torch.Tensor:
    """Rows c0..c1-1 of the n x n identity."""
    E = torch.zeros(c1 - c0, n, dtype=like.dtype, device=like.device)
    E[torch.arange(c1 - c0), torch.arange(c0, c1)] = 1.0
    return E


#: Columns go through vectorised backwards (``is_grads_batched``) when the first batch's saved graph is at
#: most this many bytes, one column per backward otherwise. Measured per column (one thread): a 1-layer
#: BERT on 48 tokens (69 KB graph) 1.3 ms vectorised vs 5.2 ms single; the suite's GPT-2 on 512 tokens
#: (13 MB) 40 vs 30-35 ms; its ViT (4.5 MB) and ResNet (8.1 MB) within 5% either way. A fixed rule (not a
#: timing taken at run time) keeps a seeded report reproducible: the two ways round differently.
VECTORISED_MAX_GRAPH_BYTES = 2**20


def block_matrices(
    operator: Any, blocks: Sequence[AnyBlock], *, progress: Callable[[str], None] | None = None
) -> tuple[list[torch.Tensor], int]:
    """Dense H_bb of every block (operator dtype, on its vector device) and the number of backward passes
    run (a vectorised one counts once). One graph per batch serves every block. Columns go in chunks of
    at most ``operator._chunk(n)`` unit vectors per vectorised backward (memory-bounded like ``matmat``)
    on small graphs, one per backward on large ones (:data:`VECTORISED_MAX_GRAPH_BYTES`; the operator's
    ``_exact_mode`` "batched"/"loop" overrides). ``progress(name)`` is called after each block."""
    bd = BlockDiagonalOperator(operator, blocks)
    op = bd.operator
    mats = [torch.zeros(d, d, dtype=bd.dtype, device=bd.device) for d in bd.dims]
    count = 0

    def batched_rows(plan: Any, grads: list[torch.Tensor], leaves: list[torch.Tensor], E: torch.Tensor):
        try:
            return _columns(plan, grads, leaves, E, batched=True)
        except (RuntimeError, NotImplementedError) as err:
            op._stop_batching(
                err, "batched backward (is_grads_batched)", "exact blocks computed one column at a time"
            )
            return _columns(plan, grads, leaves, E, batched=False)

    def run() -> None:
        nonlocal count
        for m in mats:
            m.zero_()
        count = 0

        def per_batch(weight: float, grads: list[torch.Tensor], leaves: list[torch.Tensor]) -> None:
            nonlocal count
            mode = getattr(op, "_exact_mode", None)
            if mode is None:
                small = (op.graph_bytes or 0) <= VECTORISED_MAX_GRAPH_BYTES
                mode = "batched" if small else "loop"
            for i, plan in enumerate(bd._plans):
                n, c0 = bd.dims[i], 0
                step = op._chunk(n) if mode == "batched" and op._batched_ok else 1
                while c0 < n:
                    c1 = min(n, c0 + step)
                    E = _unit_rows(c0, c1, n, mats[i])
                    if c1 - c0 > 1:
                        rows = batched_rows(plan, grads, leaves, E)
                        count += 1 if op._batched_ok else c1 - c0
                        step = step if op._batched_ok else 1
                    else:
                        rows = _columns(plan, grads, leaves, E, batched=False)
                        count += 1
                    if rows is not None:
                        mats[i][c0:c1].add_(rows, alpha=weight)
                    c0 = c1

        op._for_each_graph(per_batch)

    op._with_attention_fallback(run)
    out = []
    for b, m in zip(blocks, mats, strict=True):
        out.append(m / op.total_weight)
        if progress is not None:
            progress(b.name)
    return out, count


#: Dense block matrices held at once by :func:`exact_block_spectra` (bytes); blocks beyond it go in
#: further passes over the batches (no graph rebuild when the operator keeps its graphs).
MAX_EXACT_BYTES = 256 * 2**20


def exact_block_spectra(
    operator: Any,
    blocks: Sequence[AnyBlock],
    *,
    progress: Callable[[str], None] | None = None,
    max_bytes: int = MAX_EXACT_BYTES,
) -> tuple[list[ExactSpectrum], int]:
    """Exact spectrum of every block (see :func:`block_matrices`) and the backward passes it took; each
    spectrum's ``num_matvecs`` is its column count. Blocks go in groups whose dense matrices together
    stay under ``max_bytes`` (a group's matrices are dropped once their eigenvalues are taken)."""
    item = torch.empty(0, dtype=operator.dtype).element_size()
    groups: list[list[AnyBlock]] = [[]]
    size = 0
    for b in blocks:
        need = b.numel * b.numel * item
        if groups[-1] and size + need > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(b)
        size += need
    out, count = [], 0
    for group in groups:
        mats, n = block_matrices(operator, group, progress=progress)
        count += n
        for b, m in zip(group, mats, strict=True):
            ev, asym = symmetric_eigvalsh(m)
            out.append(ExactSpectrum.from_eigenvalues(ev, name=b.name, num_matvecs=b.numel, asymmetry=asym))
    return out, count
