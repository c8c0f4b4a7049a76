"""The block part of the Hessian probe: exact spectra for the blocks that are cheaper exact, lockstep block
SLQ for the rest, each a resumable phase (:mod:`hessian_spectra.curvature.resume`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from hessian_spectra.curvature.block_exact import exact_block_spectra
from hessian_spectra.curvature.blocks import AnyBlock
from hessian_spectra.curvature.plan_meter import NO_METER
from hessian_spectra.curvature.probe_cost import _Counted, exact_block_mask
from hessian_spectra.krylov.exact import ExactSpectrum
from hessian_spectra.krylov.slq import SLQResult, slq_lockstep

__all__ = ["EXACT_GROUP", "block_spectra"]


#: Exact blocks are computed (and saved for ``--resume``) in groups of this many blocks; each group is
#: one pass over the batches (a graph rebuild per batch only when the operator does not keep graphs).
EXACT_GROUP = 16


def block_spectra(
    op: Any,
    blocks: Sequence[AnyBlock],
    settings: Any,
    tick: Callable[..., None],
    phase: Callable[..., Any],
    meter: Any = NO_METER,
) -> tuple[list[SLQResult | ExactSpectrum], int]:
    """Exact spectra for the blocks :func:`exact_block_mask` picks, lockstep block SLQ for the rest (each
    with the probes it would draw among all blocks); results in block order, and the backward count.
    ``phase(name, compute, label)`` runs (or restores) one resumable phase; work that runs is metered
    under the plan's phases ``block SLQ`` and ``exact blocks`` (:mod:`~hessian_spectra.curvature.plan_meter`)."""
    mask = exact_block_mask([b.numel for b in blocks], settings)
    results: list[SLQResult | ExactSpectrum | None] = [None] * len(blocks)
    backwards = 0
    est = [i for i, e in enumerate(mask) if not e]
    if est:

        def block_slq() -> dict[str, Any]:
            bd = op.block_diagonal([blocks[i] for i in est])
            out = slq_lockstep(
                _Counted(bd, tick, "block SLQ"), num_probes=settings.block_probes, steps=settings.block_steps,
                seed=settings.seed, indices=est, reorthogonalize=settings.reorthogonalize,
            )  # fmt: skip
            meter.add_block_backwards(bd.num_block_hvps)
            return {"results": out, "backwards": bd.num_block_hvps}

        got = phase("block_slq", block_slq, "block SLQ")
        for i, r in zip(est, got["results"], strict=True):
            results[i] = r
        backwards += got["backwards"]
    exact = [i for i, e in enumerate(mask) if e]
    for g0 in range(0, len(exact), EXACT_GROUP):
        group = exact[g0 : g0 + EXACT_GROUP]

        def exact_group(group: list[int] = group) -> dict[str, Any]:
            meter.begin("exact blocks")  # the groups that run continue one metered phase
            spectra, count = exact_block_spectra(
                op, [blocks[i] for i in group], progress=lambda n: tick("exact blocks")
            )
            meter.add_block_backwards(count)
            return {"results": spectra, "backwards": count}

        got = phase(f"exact_blocks_{g0 // EXACT_GROUP}", exact_group)
        for i, r in zip(group, got["results"], strict=True):
            results[i] = r
        backwards += got["backwards"]
    return [r for r in results if r is not None], backwards
