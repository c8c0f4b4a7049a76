"""Block-parallel block spectra: the blocks of a block-diagonal Hessian split over ranks by cost.

Belongs here: per-block cost estimates and measurements and :func:`block_spectra`, which runs lockstep
SLQ/Lanczos on this rank's blocks (seeded by their global indices) and gathers every block's result.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from hessian_spectra.errors import InputError
from hessian_spectra.parallel.data_parallel import DistributedHessianOperator
from hessian_spectra.parallel.process_group import _gather_objects, _gather_shares, _rank_world
from hessian_spectra.parallel.sharding import BlockAssignment, assign_by_cost, shard_indices


def estimate_block_costs(
    blocks: Sequence[Any], steps: int, backward_cost: float | None = None
) -> list[float]:
    """A static cost guess for a block's Krylov run: ``min(steps, n) * (backward_cost + n * min(steps, n))``
    for a block of n parameters (HVPs plus full reorthogonalisation). Crude: a block's pruned backward
    costs more the earlier its layer sits, which sizes cannot see; :func:`measure_block_costs` can."""
    sizes = [int(b.numel) if hasattr(b, "numel") else int(b) for b in blocks]
    if backward_cost is None:
        backward_cost = sum(sizes) / max(len(sizes), 1)
    return [min(steps, n) * (float(backward_cost) + n * min(steps, n)) for n in sizes]


def measure_block_costs(operator: Any, blocks: Sequence[Any], steps: int, group: Any = None) -> list[float]:
    """Cost of each block's Krylov run, ``min(steps, n) * t_b``, with ``t_b`` the measured time of one
    block HVP (ranks time a round-robin share after one warm-up HVP and share the timings, so every rank
    gets the same list). Costs about one HVP per block: under 1% of a typical SLQ run."""
    rank, world = _rank_world(group)
    mine = shard_indices(len(blocks), rank, world)
    times = {}
    if mine:
        gen = torch.Generator().manual_seed(0)
        warm = operator.block_diagonal([blocks[mine[0]]])
        warm.matvec_many([torch.randn(int(blocks[mine[0]].numel), generator=gen, dtype=torch.float64)])
        for i in mine:
            mop = operator.block_diagonal([blocks[i]])
            v = torch.randn(int(blocks[i].numel), generator=gen, dtype=torch.float64)
            t = time.perf_counter()
            mop.matvec_many([v])
            times[i] = time.perf_counter() - t
    if world > 1:
        for part in _gather_objects(times, "sharing block timings", group):
            times.update(part)
    return [min(steps, int(b.numel)) * times[i] for i, b in enumerate(blocks)]


def block_spectra(
    operator: Any,
    blocks: Sequence[Any],
    *,
    method: str = "slq",
    group: Any = None,
    costs: Sequence[float] | str = "measure",
    seed: int = 0,
    **kwargs: Any,
) -> tuple[list[Any], BlockAssignment]:
    """Per-block spectra with the blocks split over ranks; every rank returns all results in block order.

    ``operator`` is this rank's full-data operator (a HessianOperator on ALL batches; or anything with
    ``block_diagonal(blocks)``). ``method="slq"`` runs :func:`~hessian_spectra.krylov.slq.slq_lockstep` (kwargs:
    ``num_probes``, ``steps``, ``probe``, ...), ``"lanczos"`` :func:`~hessian_spectra.krylov.lanczos.lanczos_lockstep`
    (``k``, ``which``, ``tol``, ``max_steps``). Block ``i`` is seeded by ``block_seed(seed, i)`` with
    its index in ``blocks``, so results equal a single-process lockstep run over all ``blocks``.
    ``costs``: ``"measure"`` (:func:`measure_block_costs`, the default), ``"estimate"``
    (:func:`estimate_block_costs`) or one number per block; the plan returned has each rank's seconds.
    """
    from hessian_spectra.krylov.lanczos import default_max_steps, lanczos_lockstep
    from hessian_spectra.krylov.slq import slq_lockstep

    if method not in ("slq", "lanczos"):
        raise InputError(None, f"method must be 'slq' or 'lanczos', got {method!r}")
    if isinstance(operator, DistributedHessianOperator) and operator.world_size > 1:
        raise InputError(
            None, "block_spectra splits blocks, not data: give each rank a full-data local operator"
        )
    blocks = list(blocks)
    if not blocks:
        raise InputError(None, "no blocks given")
    rank, world = _rank_world(group)
    if isinstance(costs, str):
        if method == "slq":
            steps = int(kwargs.get("steps", 30))
        else:
            steps = int(kwargs.get("max_steps") or default_max_steps(10**9, int(kwargs.get("k", 5))))
        if costs == "measure":
            costs = measure_block_costs(operator, blocks, steps, group)
        elif costs == "estimate":
            costs = estimate_block_costs(blocks, steps)
        else:
            raise InputError(None, f"costs must be 'measure', 'estimate' or numbers, got {costs!r}")
    elif len(costs) != len(blocks):
        raise InputError(None, f"{len(costs)} costs for {len(blocks)} blocks")
    plan = assign_by_cost(costs, world)
    mine = plan.items(rank)
    error: BaseException | None = None
    results: dict[int, Any] = {}
    seconds = 0.0
    if mine:
        started = time.perf_counter()
        try:
            mop = operator.block_diagonal([blocks[i] for i in mine])
            run = slq_lockstep if method == "slq" else lanczos_lockstep
            out = run(mop, seed=seed, indices=mine, **kwargs)
            results = dict(zip(mine, out, strict=True))
        except Exception as exc:
            if world == 1:
                raise
            error = exc
        seconds = time.perf_counter() - started
    if world == 1:
        return [results[i] for i in range(len(blocks))], replace(plan, rank_seconds=(round(seconds, 4),))
    merged, rank_seconds = _gather_shares(
        "block spectra", "gathering block spectra", error, results, seconds, group
    )
    plan = replace(plan, rank_seconds=tuple(rank_seconds))
    return [merged[i] for i in range(len(blocks))], plan


__all__ = ["estimate_block_costs", "measure_block_costs", "block_spectra"]
