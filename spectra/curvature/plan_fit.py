"""Fitting a Hessian run to its budget: the largest probes/steps (and, for big models, an even subset of
blocks per group) whose plan (:mod:`hessian_spectra.curvature.plan`) fits ``time_limit``/``max_memory``,
or a one-line refusal; and :func:`plan_run`, which measures, fits and starts the meter for
:func:`~hessian_spectra.curvature.probe.run_hessian`. Design notes: spectra/docs/plan.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from hessian_spectra.curvature.budget import MIN_LANCZOS_STEPS, MIN_PROBES, MIN_STEPS, apply_budget
from hessian_spectra.curvature.budget import format_bytes as fb
from hessian_spectra.curvature.budget import format_seconds as fs
from hessian_spectra.curvature.plan import (
    PhaseCost,
    Plan,
    UnitCosts,
    column_phase,
    measure_units,
    phase_costs,
)
from hessian_spectra.curvature.plan_meter import PeakMemory, PhaseMeter
from hessian_spectra.errors import InputError
from hessian_spectra.krylov.lanczos import default_max_steps

__all__ = ["fit_plan", "plan_run", "spread_blocks"]

#: Fraction of the time left after measuring that the phases may plan to use (ETA noise, report writing).
TIME_MARGIN = 0.85


def spread_blocks(blocks: Sequence[Any], per_group: int) -> list[Any]:
    """At most ``per_group`` blocks of every group (the role of the block's tensor: q, k, v, mlp, norm,
    embedding, ...), evenly spaced over depth within the group; block order kept."""
    keep: set[int] = set()
    for idx in _group_sizes(blocks).values():
        n, k = len(idx), min(per_group, len(idx))
        keep.update(idx[round(j * (n - 1) / (k - 1))] if k > 1 else idx[(n - 1) // 2] for j in range(k))
    return [b for i, b in enumerate(blocks) if i in keep]


def _levels(settings: Any, dim: int) -> list[Any]:
    """Settings from the requested ones down to the smallest useful plan (probes and steps shrink
    together; Lanczos steps with the square root of the factor)."""
    lz0 = int(settings.lanczos_steps or default_max_steps(dim, settings.top_k))
    out, seen = [], set()
    for f in (1.0, 0.8, 0.64, 0.5, 0.4, 0.3, 0.2, 0.12, 0.06, 0.0):
        s = replace(
            settings,
            probes=min(settings.probes, max(MIN_PROBES, round(settings.probes * f))),
            steps=min(settings.steps, max(MIN_STEPS, round(settings.steps * f))),
            block_probes=min(settings.block_probes, max(MIN_PROBES, round(settings.block_probes * f))),
            block_steps=min(settings.block_steps, max(MIN_STEPS, round(settings.block_steps * f))),
            lanczos_steps=min(lz0, max(MIN_LANCZOS_STEPS, round(lz0 * math.sqrt(f)))) if f < 1 else settings.lanczos_steps,
        )  # fmt: skip
        key = (s.probes, s.steps, s.block_probes, s.block_steps, s.lanczos_steps)
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def fit_plan(
    units: UnitCosts, settings: Any, blocks: Sequence[Any], chunk: Any = None, extra: Sequence[PhaseCost] = ()
) -> tuple[Any, list[Any], Plan]:
    """The largest settings (and, when needed, an even subset of blocks) whose plan fits the settings'
    ``time_limit`` (seconds) and ``max_memory`` (bytes); :class:`InputError` naming the flag when even
    the smallest useful plan does not fit. ``extra``: phases of fixed cost that follow (head structure)."""
    settings = apply_budget(settings)

    def costs(u: UnitCosts, s: Any, dims: Sequence[int], ch: Any) -> list[PhaseCost]:
        return [*phase_costs(u, s, dims, ch), *extra]

    limit, mem = settings.time_limit, settings.max_memory
    avail = None if limit is None else max(0.0, (limit - units.measure_s) * TIME_MARGIN)

    def fits(phases: list[PhaseCost]) -> bool:
        t_ok = avail is None or sum(p.seconds for p in phases) <= avail
        m_ok = (
            mem is None
            or max([units.baseline_bytes + units.work_bytes] + [p.peak_bytes for p in phases]) <= mem
        )
        return t_ok and m_ok

    notes: list[str] = []
    levels = _levels(settings, units.dim) if (limit or mem) else [settings]
    if mem:  # each level with the Krylov basis kept, then without (SLQ without reorthogonalisation)
        levels = [x for s in levels for x in (s, replace(s, reorthogonalize=False))]
    chosen, kept = None, list(blocks)
    for s in levels:
        if fits(costs(units, s, [b.numel for b in kept], chunk)):
            chosen = s
            break
    if chosen is None and len(blocks) > 1:
        s = levels[-1]
        most = max(len(v) for v in _group_sizes(blocks).values())
        for k in range(most - 1, 0, -1):
            sub = spread_blocks(blocks, k)
            if fits(costs(units, s, [b.numel for b in sub], chunk)):
                chosen, kept = s, sub
                break
        if chosen is not None:
            notes.append(
                f"{len(kept)} of {len(blocks)} blocks analysed to fit the budget: at most {k} per group "
                "(q, k, v, attention output, MLP, norm, embedding, ...), evenly spaced over depth"
            )
    if chosen is None:
        smallest = costs(units, levels[-1], [b.numel for b in spread_blocks(blocks, 1)], chunk)
        t = units.measure_s + sum(p.seconds for p in smallest)
        peak = max([units.baseline_bytes + units.work_bytes] + [p.peak_bytes for p in smallest])
        over_t = avail is not None and sum(p.seconds for p in smallest) > avail
        flag = "--time-limit" if over_t else "--max-memory"
        what = f"about {fs(t)} > {fs(limit)}" if over_t else f"about {fb(peak)} > {fb(mem)}"
        parts = ", ".join(f"{p.name} {fs(p.seconds) if over_t else fb(p.peak_bytes)}" for p in smallest)
        worst = max(smallest, key=lambda p: p.seconds if over_t else p.peak_bytes)
        hint = "--no-structure, " if worst.name == "head structure" else ""  # a fixed cost nothing above shrinks
        raise InputError(
            flag, f"even the smallest useful plan ({MIN_PROBES} probes x {MIN_STEPS} steps, one block per group) "
            f"needs {what} (measuring {fs(units.measure_s)}, {parts}; one HVP {fs(units.hvp_s)}); allow more "
            f"or use {hint}fewer/smaller --batches",
        )  # fmt: skip
    if not chosen.reorthogonalize and settings.reorthogonalize:
        notes.append("SLQ without reorthogonalisation (no stored Krylov basis) to fit --max-memory")
    if chosen is not settings and (limit or mem):
        notes.append(
            f"budget chose probes {chosen.probes} x steps {chosen.steps} (full), {chosen.block_probes} x "
            f"{chosen.block_steps} (blocks), Lanczos <= {chosen.lanczos_steps or 'default'} steps"
        )
    phases = costs(units, chosen, [b.numel for b in kept], chunk)
    chosen_d = {
        k: getattr(chosen, k)
        for k in ("probes", "steps", "block_probes", "block_steps", "lanczos_steps", "top_k")
    }
    plan = Plan(
        units=units, phases=tuple(phases), settings=chosen_d, blocks_total=len(blocks),
        blocks_kept=tuple(b.name for b in kept), time_limit=limit, max_memory=mem, budget=settings.budget,
        notes=tuple(notes),
    )  # fmt: skip
    return chosen, kept, plan


def _group_sizes(blocks: Sequence[Any]) -> dict[str, list[int]]:
    """Block indices by the role of their (first) tensor."""
    from hessian_spectra.weights.roles import tensor_role

    groups: dict[str, list[int]] = {}
    for i, b in enumerate(blocks):
        groups.setdefault(tensor_role(b.params[0]), []).append(i)
    return groups


def plan_run(
    op: Any, blocks: Sequence[Any], settings: Any, column_work: Sequence[tuple[str, Any]] = ()
) -> tuple[PhaseMeter, Any, list[Any], Plan]:
    """Measure unit costs on ``op`` (its graphs stay for the run), fit the plan, and return the meter
    (already timing: its first phase is "measure"), the chosen settings and blocks, and the plan.
    ``column_work``: ``(phase name, [(numel, columns), ...])`` of restricted-column phases that follow
    the run (:func:`column_phase`)."""
    memory = PeakMemory(op.device)
    meter = PhaseMeter(memory)
    meter.attach(op)
    meter.begin("measure")
    try:
        units = measure_units(op, blocks, memory, seed=settings.seed)
        meter.phases[-1].hvps = units.measure_hvps
        meter.add_block_backwards(units.measure_block_backwards)
        extra = [column_phase(units, name, work) for name, work in column_work]
        chosen, kept, plan = fit_plan(units, settings, blocks, chunk=op._chunk, extra=extra)
    except BaseException:
        meter.finish()
        raise
    return meter, chosen, kept, plan
