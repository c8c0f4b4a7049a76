"""Which rank owns which item: round-robin shards of the batches and cost-balanced assignments.

Belongs here: the pure bookkeeping of splitting work (no collectives), shared by the data-, block-
and matrix-parallel modules.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hessian_spectra.errors import InputError
from hessian_spectra.parallel.process_group import _rank_world


def shard_indices(n: int, rank: int, world: int, costs: Sequence[float] | None = None) -> list[int]:
    """Indices of ``n`` items this rank owns: round-robin, or balanced by ``costs`` (:func:`assign_by_cost`)."""
    if world < 1 or not 0 <= rank < world:
        raise InputError(None, f"rank {rank} is not in a world of size {world}")
    if costs is None:
        return list(range(rank, n, world))
    owners = assign_by_cost(costs, world).owners
    return [i for i in range(n) if owners[i] == rank]


def shard_batches(
    batches: Sequence[Any],
    rank: int | None = None,
    world: int | None = None,
    *,
    weights: Sequence[float] | None = None,
) -> list[Any] | tuple[list[Any], list[float]]:
    """This rank's batches (round-robin; default rank/world from the process group).

    With explicit per-batch ``weights`` returns ``(batches, weights)`` sharded alike. Every rank needs
    at least one batch: fewer batches than ranks is an InputError (split the data finer).
    """
    if rank is None or world is None:
        r, w = _rank_world()
        rank = r if rank is None else rank
        world = w if world is None else world
    items = list(batches)
    if len(items) < world:
        raise InputError(
            None, f"{len(items)} batch(es) for {world} ranks: every rank needs at least one batch"
        )
    idx = shard_indices(len(items), rank, world)
    if weights is None:
        return [items[i] for i in idx]
    ws = [float(x) for x in weights]
    if len(ws) != len(items):
        raise InputError(None, f"{len(ws)} weights for {len(items)} batches")
    return [items[i] for i in idx], [ws[i] for i in idx]


@dataclass(frozen=True)
class BlockAssignment:
    """Which rank owns each item (``owners[i]``), the cost estimates used, each rank's estimated load
    and, once a run is done, each rank's measured seconds."""

    owners: tuple[int, ...]
    costs: tuple[float, ...]
    loads: tuple[float, ...]
    rank_seconds: tuple[float, ...] = ()

    def items(self, rank: int) -> list[int]:
        """The items ``rank`` owns, in increasing index order."""
        return [i for i, r in enumerate(self.owners) if r == rank]

    @property
    def imbalance(self) -> float:
        """max load / mean load (1.0 = perfectly balanced)."""
        mean = sum(self.loads) / max(len(self.loads), 1)
        return max(self.loads) / mean if mean > 0 else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "owners": list(self.owners),
            "costs": list(self.costs),
            "loads": list(self.loads),
            "imbalance": self.imbalance,
            "rank_seconds": list(self.rank_seconds),
        }


def assign_by_cost(costs: Sequence[float], world: int) -> BlockAssignment:
    """Greedy longest-processing-time assignment (deterministic: ties go to the lower index/rank);
    within 4/3 of the optimal makespan."""
    if world < 1:
        raise InputError(None, f"world size must be >= 1, got {world}")
    cs = [float(c) for c in costs]
    if any(not math.isfinite(c) or c < 0 for c in cs):
        raise InputError(None, "costs must be finite and non-negative")
    heap = [(0.0, r) for r in range(world)]
    owners = [0] * len(cs)
    for i in sorted(range(len(cs)), key=lambda i: (-cs[i], i)):
        load, r = heapq.heappop(heap)
        owners[i] = r
        heapq.heappush(heap, (load + cs[i], r))
    loads = [0.0] * world
    for i, r in enumerate(owners):
        loads[r] += cs[i]
    return BlockAssignment(tuple(owners), tuple(cs), tuple(loads))


__all__ = ["shard_indices", "shard_batches", "BlockAssignment", "assign_by_cost"]
