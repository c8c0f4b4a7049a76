"""The plan of a Hessian run in seconds and bytes, made before the work from measured unit costs.

:func:`measure_units` times one gradient (the first-order graphs, kept for the HVPs that follow), one
HVP and one pruned block backward on a few blocks spread over the list, on the real batches, and reads
the memory high-water mark meanwhile. :func:`phase_costs` turns the HVP counts of
:func:`~hessian_spectra.curvature.probe_cost.estimate_cost` into per-phase counts (HVPs, block
backwards, gradients, forward passes), seconds and peak bytes (measured work + Krylov basis);
:func:`~hessian_spectra.curvature.plan_fit.fit_plan` picks probes, steps and, for big models, which
blocks so the plan fits the budget. Design notes: spectra/docs/plan.md.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from hessian_spectra.curvature.block_exact import MAX_EXACT_BYTES
from hessian_spectra.curvature.budget import format_bytes as fb
from hessian_spectra.curvature.budget import format_seconds as fs
from hessian_spectra.curvature.plan_meter import PeakMemory
from hessian_spectra.curvature.probe_cost import estimate_cost, exact_block_mask
from hessian_spectra.krylov.slq import slq, slq_lockstep

__all__ = ["Plan", "PhaseCost", "UnitCosts", "column_phase", "measure_units", "phase_costs"]

_ROWS = 16  # the Krylov basis grows in chunks of this many rows (hessian_spectra.krylov.chain)
#: Blocks timed by :func:`measure_units` (spread over the block list).
SAMPLE_BLOCKS = 4


@dataclass(frozen=True)
class UnitCosts:
    """Measured unit costs of one run (seconds over all batches) and its memory (bytes).

    ``gradient_s``: loss + first-order gradient of every batch (in "reuse" mode this builds the graphs
    every later HVP reuses); ``hvp_s``: one full HVP; ``block_backward_s``: one pruned block backward,
    mean over the sampled blocks (exact-block and head-structure columns are planned at this cost each,
    an upper bound where columns are batched); ``row_pass_s``: one Krylov basis row of a projection
    pass. ``baseline_bytes``: memory before the work (model, data, libraries);
    ``work_bytes``: peak above it while measuring (kept graphs + one HVP's transient)."""

    mode: str
    dim: int
    num_batches: int
    gradient_s: float
    hvp_s: float
    block_backward_s: float
    row_pass_s: float
    measure_s: float
    model_bytes: int
    graph_bytes: int
    vector_bytes: int
    baseline_bytes: int
    work_bytes: int
    memory_source: str
    measure_hvps: int = 0
    measure_block_backwards: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PhaseCost:
    """One planned phase: work counts, seconds and peak bytes (whole process; ``basis_bytes`` of it)."""

    name: str
    hvps: int
    block_backwards: int
    gradients: int
    forwards: int
    seconds: float
    peak_bytes: int
    basis_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    """The plan: unit costs, phases, the settings and blocks chosen and why (``notes``)."""

    units: UnitCosts
    phases: tuple[PhaseCost, ...]
    settings: dict[str, Any]
    blocks_total: int
    blocks_kept: tuple[str, ...]
    time_limit: float | None = None
    max_memory: int | None = None
    budget: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def seconds(self) -> float:
        """Planned wall time: measuring plus every phase."""
        return self.units.measure_s + sum(p.seconds for p in self.phases)

    @property
    def peak_bytes(self) -> int:
        return max([self.units.baseline_bytes + self.units.work_bytes] + [p.peak_bytes for p in self.phases])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(seconds=self.seconds, peak_bytes=self.peak_bytes, units=self.units.to_dict())
        d["phases"] = [p.to_dict() for p in self.phases]
        return d

    def table(self) -> str:
        """The plan as a few lines of text (the CLI prints it on stderr before the run)."""
        u = self.units
        head = (
            f"plan: {fs(self.seconds)}, peak {fb(self.peak_bytes)} (model {fb(u.model_bytes)}, graphs "
            f"{fb(u.graph_bytes)}, baseline {fb(u.baseline_bytes)}); measured gradient {fs(u.gradient_s)}, "
            f"HVP {fs(u.hvp_s)}, block backward {fs(u.block_backward_s)} ({u.mode} mode, {u.num_batches} batch(es))"
        )
        rows = [
            f"  {'phase':<14}{'HVPs':>7}{'blk bwd':>9}{'grads':>7}{'fwds':>7}{'time':>10}{'peak':>11}{'basis':>11}"
        ]
        for p in self.phases:
            rows.append(
                f"  {p.name:<14}{p.hvps:>7}{p.block_backwards:>9}{p.gradients:>7}{p.forwards:>7}"
                f"{fs(p.seconds):>10}{fb(p.peak_bytes):>11}{fb(p.basis_bytes):>11}"
            )
        return "\n".join([head, *rows, *(f"  note: {n}" for n in self.notes)])


def _warm_time(fn: Any, min_total: float = 1.0, reps: int = 3) -> float:
    """Seconds of one warm call: ``fn`` is repeated (at most ``reps`` times, while the calls so far took
    under ``min_total`` s) and the fastest call after the first (cold: allocations, autograd set-up) is
    taken; a single slow call stands alone."""
    times: list[float] = []
    while len(times) < reps and (not times or sum(times) < min_total):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times[1:]) if len(times) > 1 else times[0]


def _chain_s(u: UnitCosts, steps: int, share: float, reorth: bool) -> float:
    """Seconds of one Lanczos chain's own vector work over ``steps`` steps on a ``share`` of the
    parameters: ~6 row passes a step, plus full reorthogonalisation (step j projects against j rows and
    subtracts them: 2j passes) when the basis is kept. Lanczos' partial reorthogonalisation is planned at
    half of the full cost."""
    passes = 6 * steps + (steps * (steps + 1) if reorth else 0)
    return passes * share * u.row_pass_s


def _row_pass_s(dim: int, dtype: torch.dtype, device: Any) -> float:
    """Seconds per basis row of one projection pass (``mv`` + ``addmv`` over 2 rows, as the chain does)."""
    from hessian_spectra.krylov.chain import basis_dtype

    dt = basis_dtype(dtype)
    Q = torch.ones(2, dim, dtype=dt, device=device)
    w = torch.ones(dim, dtype=dt, device=device)

    def once() -> None:
        w.addmv_(Q.T, torch.mv(Q, w), alpha=-1e-9)

    return _warm_time(once, min_total=0.2, reps=4) / 2


def _chunked(rows: int) -> int:
    return math.ceil(rows / _ROWS) * _ROWS


def measure_units(op: Any, blocks: Sequence[Any], memory: PeakMemory, *, seed: int = 0) -> UnitCosts:
    """Time one gradient, one Krylov step (HVP + chain), one pruned backward on up to :data:`SAMPLE_BLOCKS`
    blocks and one basis-row pass; the graphs built stay for the run."""
    memory.reset()
    base = memory.current()
    t0 = time.perf_counter()
    op.gradient()
    t1 = time.perf_counter()
    h0 = op.num_matvecs
    steps = min(3, int(op.dim))  # Krylov steps as the run takes them: HVP + chain bookkeeping
    hvp = _warm_time(lambda: slq(op, num_probes=1, steps=steps, seed=seed, reorthogonalize=False)) / steps
    bb, backs, hvps = 0.0, 0, op.num_matvecs - h0
    if blocks:
        idx = sorted({round(i * (len(blocks) - 1) / max(1, SAMPLE_BLOCKS - 1)) for i in range(SAMPLE_BLOCKS)})
        sample = [blocks[i] for i in idx]
        bd = op.block_diagonal(sample)
        m = min(2, min(bd.dims))
        step = (
            _warm_time(lambda: slq_lockstep(bd, num_probes=1, steps=m, seed=seed, reorthogonalize=False)) / m
        )
        bb = max(step - (t1 - t0 if op.mode != "reuse" else 0.0), 0.0) / len(sample)
        backs = bd.num_block_hvps
    item = torch.empty(0, dtype=op.dtype).element_size()
    peak = memory.peak()  # before the row-pass timing's own vectors
    rp = _row_pass_s(int(op.dim), op.dtype, op.device)
    model = sum(p.numel() * p.element_size() for p in op._leaves)
    graphs = int(op._estimated_total_bytes()) if op.mode == "reuse" else int(op.graph_bytes or 0)
    return UnitCosts(
        mode=op.mode, dim=int(op.dim), num_batches=len(op._active), gradient_s=t1 - t0, hvp_s=hvp,
        block_backward_s=bb, row_pass_s=rp, measure_s=time.perf_counter() - t0, model_bytes=model,
        graph_bytes=graphs, vector_bytes=int(op.dim) * max(item, 4), baseline_bytes=base,
        work_bytes=max(0, peak - base), memory_source=memory.source, measure_hvps=hvps,
        measure_block_backwards=backs,
    )  # fmt: skip


def phase_costs(
    units: UnitCosts, settings: Any, block_dims: Sequence[int], chunk: Any = None
) -> list[PhaseCost]:
    """Per phase: counts, seconds and peak bytes of a run with these settings and block sizes.

    Upper bounds (Lanczos may stop early). In "reuse" mode graphs are built once (while measuring);
    otherwise every full HVP and every lockstep block step rebuilds each batch's graph.
    ``chunk(n)``: columns per vectorised backward of an n-column exact block (default: all)."""
    cost = estimate_cost(units.dim, units.num_batches, block_dims, settings)
    u, nb = units, units.num_batches
    rebuild = u.mode != "reuse"
    base = u.baseline_bytes + u.work_bytes
    vec = u.vector_bytes
    out: list[PhaseCost] = []

    def add(name: str, hvps: int, backs: int, builds: int, seconds: float, basis: int) -> None:
        out.append(
            PhaseCost(name, hvps, backs, builds * nb, builds * nb, seconds, base + basis + 3 * vec, basis)
        )

    if cost.exact_full:
        d = u.dim
        add("exact Hessian", d, 0, 0, d * u.hvp_s, d * d * (vec // max(d, 1) + 8))
    elif settings.full:
        lz = cost.lanczos_hvps
        add("Lanczos", lz, 0, lz if rebuild else 0, lz * u.hvp_s + _chain_s(u, lz, 1, True) / 2,
            _chunked(lz + 1) * vec)  # fmt: skip
        m = min(settings.steps, u.dim)
        rows = _chunked(m + 1) if settings.reorthogonalize else 3
        chain = settings.probes * _chain_s(u, m, 1, settings.reorthogonalize)
        add(
            "SLQ",
            cost.slq_hvps,
            0,
            cost.slq_hvps if rebuild else 0,
            cost.slq_hvps * u.hvp_s + chain,
            rows * vec,
        )
    mask = exact_block_mask(block_dims, settings)
    item = vec // max(u.dim, 1)
    if cost.block_lockstep_calls:
        rows = (
            (lambda d: _chunked(min(settings.block_steps, d) + 1))
            if settings.reorthogonalize
            else (lambda d: 3)
        )
        basis = sum(rows(d) * d * item for d, e in zip(block_dims, mask, strict=True) if not e)
        backs = cost.block_backwards * nb
        builds = cost.block_lockstep_calls if rebuild else 0
        chain = settings.block_probes * sum(
            _chain_s(u, min(settings.block_steps, d), d / max(u.dim, 1), settings.reorthogonalize)
            for d, e in zip(block_dims, mask, strict=True)
            if not e
        )
        seconds = backs / nb * u.block_backward_s + builds * u.gradient_s + chain
        add("block SLQ", 0, backs, builds, seconds, basis)
    if cost.exact_blocks:
        dims = [d for d, e in zip(block_dims, mask, strict=True) if e]
        vbacks = sum(math.ceil(d / max(1, chunk(d) if chunk else d)) for d in dims) * nb
        mats = min(sum(d * d * item for d in dims), MAX_EXACT_BYTES) + max(d * d * 8 for d in dims)
        add("exact blocks", 0, vbacks, 1 if rebuild else 0, cost.exact_columns * u.block_backward_s, mats)
    return out


def column_phase(units: UnitCosts, name: str, tensors: Sequence[tuple[int, int]]) -> PhaseCost:
    """A phase of exact Hessian columns restricted to single tensors (the head-structure check): per
    ``(numel, columns)`` one operator (its graphs built: one gradient and forward per batch) and
    ``columns`` restricted columns (counted as block backwards, each planned at one pruned backward)."""
    u = units
    per_col = u.block_backward_s
    cols = sum(c for _, c in tensors)
    item = u.vector_bytes // max(u.dim, 1)
    mats = max((n * c * (item + 8) for n, c in tensors), default=0)
    builds = len(tensors) * u.num_batches
    seconds = len(tensors) * u.gradient_s + cols * per_col
    return PhaseCost(name, 0, cols, builds, builds, seconds, u.baseline_bytes + u.work_bytes + mats, mats)
