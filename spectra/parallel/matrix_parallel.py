"""Matrix-parallel weights probe: the checkpoint's tensors split over ranks by SVD cost.

Belongs here: :func:`analyze_weights_distributed` and its cost model; the per-matrix work is the
single-process probe's (:mod:`hessian_spectra.weights.probe`), so the gathered report equals it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from hessian_spectra.parallel.process_group import _gather_shares, _rank_world, resolve_device
from hessian_spectra.parallel.sharding import assign_by_cost
from torch import nn


def _record_cost(record: Any) -> float:
    """SVD-like cost of a tensor's matrices: sum of rows * cols * min(rows, cols)."""
    shapes = getattr(record, "matrix_shapes", ()) or ()
    if shapes:
        return float(sum(r * c * min(r, c) for r, c in shapes))
    n = math.prod(record.shape) if record.shape else 1
    return float(n) ** 1.5


def analyze_weights_distributed(
    source: str | Path | nn.Module,
    settings: Any = None,
    *,
    group: Any = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int, str], None] | None = None,
) -> Any:
    """:func:`hessian_spectra.weights.probe.analyze_weights` with the tensors split over ranks by SVD cost.

    Each rank opens the checkpoint (headers only), reads just its own tensors one at a time and
    decomposes them (on ``device``: ``"auto"`` picks CUDA when available); results are gathered and
    every rank returns the same :class:`~hessian_spectra.weights.results.WeightsReport`, equal to the single-process one
    except for timing fields in ``provenance`` (which also records the world size and the loads).
    """
    from hessian_spectra.checkpoints.matrices import extract_matrices
    from hessian_spectra.checkpoints.reader import open_checkpoint
    from hessian_spectra.weights.plan import WeightsSettings, compute_dtype_of, plan_inventory
    from hessian_spectra.weights.probe import analyse_view
    from hessian_spectra.weights.provenance import provenance
    from hessian_spectra.weights.results import WeightsReport
    from hessian_spectra.weights.summary import summarize

    settings = settings or WeightsSettings()
    compute_dtype = compute_dtype_of(settings)
    dev = resolve_device(device)
    rank, world = _rank_world(group)

    def local_part() -> tuple[Any, ...]:
        """Plan every tensor (headers only), then read and decompose this rank's share."""
        with open_checkpoint(source) as ckpt:
            records = plan_inventory(ckpt, settings)
            todo = [r for r in records if r.status == "analysed"]
            plan = assign_by_cost([_record_cost(r) for r in todo], world)
            mine = plan.items(rank)
            out: dict[int, list[Any]] = {}
            for j, i in enumerate(mine):
                record = todo[i]
                if progress is not None:
                    progress(j, len(mine), record.name)
                tensor = ckpt.load(record.name)
                views = extract_matrices(record, tensor)
                if dev.type != "cpu":
                    views = [replace(v, matrix=v.matrix.to(dev)) for v in views]
                out[i] = [analyse_view(v, ckpt.config, settings, compute_dtype) for v in views]
                del tensor, views
            if progress is not None:
                progress(len(mine), len(mine), "")
            return records, todo, plan, out, tuple(ckpt.files), tuple(ckpt.notes), ckpt.source

    old_threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    error: BaseException | None = None
    part: tuple[Any, ...] = ()
    try:
        part = local_part()
    except Exception as exc:  # shared with every rank below, then raised everywhere
        if world == 1:
            raise
        error = exc
    finally:
        if settings.threads:
            torch.set_num_threads(old_threads)
    own_seconds = time.perf_counter() - started
    if world > 1:
        share = part[3] if error is None else {}
        merged, rank_seconds = _gather_shares(
            "weights probe", "gathering the weights probe", error, share, own_seconds, group
        )
    else:
        merged, rank_seconds = part[3], [round(own_seconds, 4)]
    records, todo, plan, _, files, notes, display = part
    results = [m for i in range(len(todo)) for m in merged[i]]
    elapsed = time.perf_counter() - started
    summary = summarize([m.metrics for m in results if m.metrics is not None])
    extra = {
        "analysis_seconds": round(elapsed, 4),
        "distributed": {
            "world_size": world,
            "backend": dist.get_backend(group) if world > 1 else None,
            "device": str(dev),
            "rank_seconds": rank_seconds,
            "assignment_imbalance": round(plan.imbalance, 4),
        },
    }
    return WeightsReport(
        source=display,
        files=files,
        inventory=tuple(records),
        matrices=tuple(results),
        summary=summary,
        settings=settings,
        provenance=provenance(settings.seed, extra),
        notes=notes,
    )


__all__ = ["analyze_weights_distributed"]
