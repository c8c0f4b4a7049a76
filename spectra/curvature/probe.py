"""The Hessian side of a report: full-model extreme eigenvalues (Lanczos), full-model density and trace
(SLQ), and per-block densities, lambda_max and traces (block-diagonal SLQ with chains in lockstep).
Where the exact answer is cheaper than the estimate it replaces it: a block of n <= probes x steps
parameters gets every eigenvalue from its n columns (:mod:`hessian_spectra.curvature.block_exact`), and
a model of dim <= probes x steps its whole dense spectrum (:mod:`hessian_spectra.krylov.exact`).

:func:`estimate_cost` says how many HVPs a run will take before any is done; :func:`run_hessian` does
the work and calls ``progress(done, total, phase)`` as it goes, counting the steps of each phase
(:func:`phase_steps`; ``phase`` "done" at the end).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from hessian_spectra.curvature.block_builders import head_blocks, layer_blocks, parameter_blocks
from hessian_spectra.curvature.block_operators import check_block
from hessian_spectra.curvature.blocks import AnyBlock, Block
from hessian_spectra.curvature.plan_meter import NO_METER, actual_dict
from hessian_spectra.curvature.probe_blocks import block_spectra
from hessian_spectra.curvature.probe_cost import (
    CostEstimate,
    _Counted,
    estimate_cost,
)
from hessian_spectra.errors import InputError
from hessian_spectra.io import json_safe
from hessian_spectra.krylov.exact import ExactSpectrum, dense_spectrum
from hessian_spectra.krylov.lanczos import lanczos
from hessian_spectra.krylov.result import LanczosResult
from hessian_spectra.krylov.slq import SLQResult, slq
from hessian_spectra.krylov.slq_stats import density_band, uncertainty_fields
from torch import nn

__all__ = [
    "HessianSettings",
    "CostEstimate",
    "HessianReport",
    "choose_blocks",
    "estimate_cost",
    "run_hessian",
]

#: Block choices: whole tensors, Q/K/V split per head, one block per layer (every tensor sharing a
#: numbered-layer prefix), and Adam-mini blocks (built outside spectra from the model's partition, see
#: ``hessian_spectra.analyses.partitions.blockings``, and passed to :func:`run_hessian` as ``blocks=``).
BLOCKINGS = ("tensor", "head", "layer", "adam-mini")
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class HessianSettings:
    """Budget and choices of a Hessian run.

    ``top_k``: extreme eigenvalues per side; ``lanczos_steps``: cap (None: ``default_max_steps``);
    ``probes``/``steps``: full-model SLQ; ``block_probes``/``block_steps``: block SLQ; ``blocks``:
    ``"tensor"`` (one block per parameter tensor), ``"head"`` (Q/K/V projections split per head, needs
    ``n_heads``), ``"layer"`` (one block per numbered layer, see :func:`hessian_spectra.curvature.block_builders.layer_blocks`) or
    ``"adam-mini"`` (the blocks of the Adam-mini partition, given to :func:`run_hessian` as ``blocks=``);
    ``max_blocks_per_tensor``: cap on the blocks one tensor contributes under ``"adam-mini"`` (None: all);
    ``full``/``block``: which parts to run; ``exact``: compute a block's spectrum exactly from its n
    Hessian columns when n <= ``block_probes`` x ``block_steps`` (cheaper than its SLQ), and the whole
    model's when its dimension is <= ``probes`` x ``steps`` (replacing Lanczos and SLQ); ``time_limit``
    (seconds), ``max_memory`` (bytes), ``budget`` (quick/standard/thorough) and ``plan``: measure unit
    costs first and fit probes, steps and blocks to them (:mod:`hessian_spectra.curvature.plan`; any of
    the first three implies ``plan``); ``vector_device``:
    where the flat Krylov vectors live (None: the first parameter's device; "cpu" when a model-parallel
    model's vectors would not fit on its GPU); ``confidence``: the level of every interval in the report
    (traces, spectral masses).
    """

    top_k: int = 5
    lanczos_steps: int | None = None
    probes: int = 10
    steps: int = 50
    block_probes: int = 10
    block_steps: int = 50
    blocks: str = "tensor"
    n_heads: int | None = None
    max_blocks_per_tensor: int | None = None
    vector_device: str | None = None
    params: tuple[str, ...] | None = None
    full: bool = True
    block: bool = True
    exact: bool = True
    seed: int = 0
    mode: str = "auto"
    dtype: str | None = None
    confidence: float = 0.95
    time_limit: float | None = None
    max_memory: int | None = None
    budget: str | None = None
    plan: bool = False
    #: False: full and block SLQ keep no Krylov basis (three vectors per chain, no reorthogonalisation,
    #: as the "Why Transformers Need Adam" code); the plan turns it off when the basis would not fit
    reorthogonalize: bool = True

    @property
    def planned(self) -> bool:
        """Whether the run measures unit costs and makes a plan first."""
        return bool(self.plan or self.time_limit or self.max_memory or self.budget)

    def validate(self) -> None:
        """Raise :class:`InputError` naming the bad option."""
        for key in ("top_k", "probes", "steps", "block_probes", "block_steps"):
            if int(getattr(self, key)) < 1:
                raise InputError(f"--{key.replace('_', '-')}", f"must be >= 1, got {getattr(self, key)}")
        if self.lanczos_steps is not None and self.lanczos_steps < 1:
            raise InputError("--lanczos-steps", f"must be >= 1, got {self.lanczos_steps}")
        if self.blocks not in BLOCKINGS:
            raise InputError(
                "--blocks", f"unknown blocking {self.blocks!r}; use one of {', '.join(BLOCKINGS)}"
            )
        if self.n_heads is not None and self.n_heads < 1:
            raise InputError("--heads", f"must be >= 1, got {self.n_heads}")
        if self.max_blocks_per_tensor is not None and self.max_blocks_per_tensor < 1:
            raise InputError(
                "--max-blocks-per-tensor",
                f"must be >= 1 (or unset for all), got {self.max_blocks_per_tensor}",
            )
        if not (0.0 < float(self.confidence) < 1.0):
            raise InputError("--confidence", f"must be between 0 and 1 (e.g. 0.95), got {self.confidence}")
        if self.dtype not in (None, "float32", "float64"):
            raise InputError("--dtype", f"must be float32 or float64, got {self.dtype!r}")
        from hessian_spectra.curvature.budget import BUDGETS

        if self.budget is not None and self.budget not in BUDGETS:
            raise InputError("--budget", f"unknown budget {self.budget!r}; use one of {', '.join(BUDGETS)}")
        for key in ("time_limit", "max_memory"):
            if getattr(self, key) is not None and not getattr(self, key) > 0:
                raise InputError(f"--{key.replace('_', '-')}", f"must be positive, got {getattr(self, key)}")
        if not (self.full or self.block):
            raise InputError(None, "nothing to do: both the full-model and the block analysis are off")

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


@dataclass(frozen=True, eq=False)
class HessianReport:
    """Everything the Hessian probe measured; ``to_dict`` is JSON-safe (block nodes/weights included)."""

    settings: HessianSettings
    cost: CostEstimate
    dim: int
    lanczos: LanczosResult | ExactSpectrum | None
    density: SLQResult | ExactSpectrum | None
    blocks: tuple[AnyBlock, ...]
    block_results: tuple[SLQResult | ExactSpectrum, ...]
    num_hvps: int
    seconds: float
    notes: tuple[str, ...] = field(default_factory=tuple)
    weighting: str = ""
    num_block_backwards: int = 0
    #: the dtype the HVPs ran in (flat blocks are judged against its rounding)
    dtype: str = ""
    #: the plan made before the work (:class:`hessian_spectra.curvature.plan.Plan`) and what the run
    #: actually did per phase (:class:`hessian_spectra.curvature.plan_meter.PhaseActual`), when planned
    plan: Any = None
    actual: tuple[Any, ...] = ()

    def block_summary(self) -> list[dict[str, Any]]:
        """Per block: name, parameter (None for a block of several parameters; ``params`` lists them),
        kind, dim, ``method`` ("exact": every eigenvalue from the block's columns; "slq": estimated),
        lambda_max/lambda_min (extreme eigenvalues or Ritz values), trace +- stderr (plain SLQ mean) and the
        uncertainty fields of :func:`hessian_spectra.krylov.slq_stats.uncertainty_fields` (zero width when
        exact)."""
        return [
            {
                "name": b.name, "param": b.param if isinstance(b, Block) else None, "params": list(b.params),
                "kind": b.kind, "dim": r.dim, "method": "exact" if isinstance(r, ExactSpectrum) else "slq",
                "lambda_max": r.ritz_max, "lambda_min": r.ritz_min, "trace": r.trace,
                "trace_stderr": r.trace_stderr, "probes": r.num_probes, "steps": r.steps,
                **uncertainty_fields(r, self.settings.confidence),
            }
            for b, r in zip(self.blocks, self.block_results, strict=True)
        ]  # fmt: skip

    @property
    def exact_full(self) -> bool:
        """True when the full-model spectrum is exact (``lanczos`` and ``density`` are one ExactSpectrum)."""
        return isinstance(self.density, ExactSpectrum)

    @property
    def exact_block_names(self) -> list[str]:
        """Names of the blocks whose spectrum is exact (the rest are block SLQ estimates)."""
        pairs = zip(self.blocks, self.block_results, strict=True)
        return [b.name for b, r in pairs if isinstance(r, ExactSpectrum)]

    def to_dict(self) -> dict[str, Any]:
        density = None
        if self.density is not None:
            d = self.density.density()
            density = {**self.density.to_dict(), "grid": d.grid, "values": d.values, "sigma": d.sigma,
                       **uncertainty_fields(self.density, self.settings.confidence),
                       "band": density_band(self.density, d, self.settings.confidence).to_dict()}  # fmt: skip
        return json_safe(
            {
                "exact_full": self.exact_full,
                "num_exact_blocks": len(self.exact_block_names),
                "settings": self.settings.to_dict(),
                "cost_estimate": self.cost.to_dict(),
                "dim": self.dim,
                "num_hvps": self.num_hvps,
                "num_block_backwards": self.num_block_backwards,
                "dtype": self.dtype,
                "seconds": self.seconds,
                "weighting": self.weighting,
                "notes": list(self.notes),
                "plan": None if self.plan is None else self.plan.to_dict(),
                "actual": actual_dict(self.actual),
                "lanczos": None if self.lanczos is None else self.lanczos.to_dict(),
                "density": density,
                "blocks": [
                    {**s, "nodes": r.nodes, "weights": r.weights, "block": b.to_dict()}
                    for s, b, r in zip(self.block_summary(), self.blocks, self.block_results, strict=True)
                ],
            }
        )


def _module_of(name: str) -> str:
    """The attention module a projection weight belongs to (``a.b.q_proj.weight`` -> ``a.b``)."""
    return name.rsplit(".", 2)[0] if name.count(".") >= 2 else ""


def _query_head_dims(shapes: dict[str, tuple[int, ...]], n_heads: int) -> dict[str, int]:
    """Module -> head_dim (rows of its Q projection / ``n_heads``) for every 2-D Q projection."""
    from hessian_spectra.weights.roles import tensor_role

    out: dict[str, int] = {}
    for name, shape in shapes.items():
        if tensor_role(name) == "q" and len(shape) == 2 and shape[0] % n_heads == 0:
            out.setdefault(_module_of(name), shape[0] // n_heads)
    return out


def phase_steps(cost: CostEstimate) -> dict[str, int]:
    """Steps per progress phase (upper bounds: Lanczos may stop early): what one step of each costs is
    alike within a phase, so a phase's ETA can come from its own step times."""
    return {"exact Hessian": cost.exact_hvps, "Lanczos": cost.lanczos_hvps, "SLQ": cost.slq_hvps,
            "block SLQ": cost.block_lockstep_calls, "exact blocks": cost.exact_blocks}  # fmt: skip


def choose_blocks(operator: Any, settings: HessianSettings) -> list[AnyBlock]:
    """The blocks of the block analysis: whole tensors, Q/K/V projections split per head, or one block
    per layer. Adam-mini blocks need the model's partition (``hessian_spectra.analyses.partitions.blockings``): pass them to
    :func:`run_hessian` as ``blocks=``.

    Per head: Q and fused QKV are cut into ``n_heads`` heads; K and V into ``rows / head_dim`` heads with
    head_dim from the sibling Q projection (grouped-query attention), else into ``n_heads``.
    """
    blocks = parameter_blocks(operator)
    if settings.blocks == "tensor":
        return blocks
    if settings.blocks == "layer":
        return layer_blocks(operator)
    if settings.blocks == "adam-mini":
        raise InputError(
            "--blocks",
            "adam-mini blocks come from the model's partition: build them with "
            "hessian_spectra.analyses.partitions.blockings.adam_mini_blocks and pass them to run_hessian(blocks=...)",
        )
    if not settings.n_heads:
        raise InputError("--heads", "per-head blocks need the number of attention heads")
    from hessian_spectra.weights.roles import tensor_role

    heads = int(settings.n_heads)
    head_dims = _query_head_dims({b.param: b.shape for b in blocks}, heads)
    out: list[AnyBlock] = []
    for b in blocks:
        role = tensor_role(b.param)
        rows = b.shape[0] if len(b.shape) == 2 else 0
        hd = head_dims.get(_module_of(b.param)) if role in ("k", "v") else None
        if role in ("k", "v") and hd and rows % hd == 0:
            out.extend(head_blocks(operator, b.param, rows // hd, hd))
        elif role in ("q", "k", "v") and rows and rows % heads == 0:
            out.extend(head_blocks(operator, b.param, heads))
        elif role == "qkv" and rows and rows % (3 * heads) == 0:
            d = rows // 3
            for i, part in enumerate("qkv"):
                out.extend(head_blocks(operator, b.param, heads, offset=i * d, prefix=f"{b.param}:{part}"))
        else:
            out.append(b)
    return out


def run_hessian(
    model: nn.Module,
    batches: Any,
    loss: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    settings: HessianSettings | None = None,
    *,
    blocks: Sequence[AnyBlock] | None = None,
    block_notes: Sequence[str] = (),
    progress: Progress | None = None,
    on_estimate: Callable[[CostEstimate], None] | None = None,
    resume: Any = None,
    on_plan: Callable[[Any], None] | None = None,
    column_work: Sequence[tuple[str, Any]] = (),
) -> HessianReport:
    """Run the Hessian probe on ``model`` over ``batches`` (mean loss, see spectra/docs/curvature_operators.md).

    ``blocks`` (any :class:`~hessian_spectra.curvature.blocks.Block` / :class:`~hessian_spectra.curvature.blocks.CompositeBlock` list, e.g. the
    Adam-mini blocks of ``hessian_spectra.analyses.partitions.blockings``) replaces the blocks ``settings.blocks`` would choose;
    ``block_notes`` (how they were chosen) go into the report's notes. ``on_estimate(cost)`` is called
    once the operator is built and before the first HVP (the CLI prints it); ``resume`` (a
    :class:`~hessian_spectra.curvature.resume.ResumeStore`) saves each finished phase and, resuming,
    loads the saved ones instead of computing them; ``progress(done, total,
    phase)`` after every HVP, lockstep block step or exact block, with ``done``/``total`` counting that
    phase's steps (:func:`phase_steps`), and once with phase "done" at the end. When ``settings.planned``
    the unit costs are measured first, probes/steps/blocks fitted to the budget (``column_work``:
    restricted-column phases the caller runs afterwards, see
    :func:`hessian_spectra.curvature.plan_fit.plan_run`), and ``on_plan(plan)`` called before the work.
    """
    from hessian_spectra.curvature.hessian import HessianOperator

    settings = settings or HessianSettings()
    settings.validate()
    dtype = {None: None, "float32": torch.float32, "float64": torch.float64}[settings.dtype]
    op = HessianOperator(
        model,
        batches,
        loss,
        params=list(settings.params) if settings.params else None,
        mode=settings.mode,
        dtype=dtype,
        vector_device=settings.vector_device,
    )
    if not settings.block:
        blocks = []
    elif blocks is None:
        blocks = choose_blocks(op, settings)
    else:
        blocks = list(blocks)
        if not blocks:
            raise InputError("--blocks", "an empty block list was given")
        for b in blocks:
            check_block(b, op.param_shapes)
    meter, plan = NO_METER, None
    if settings.planned:
        from hessian_spectra.curvature.plan_fit import plan_run

        meter, settings, blocks, plan = plan_run(op, blocks, settings, column_work)
        block_notes = (*block_notes, *plan.notes)
        if on_plan is not None:
            on_plan(plan)
    cost = estimate_cost(op.dim, len(op.batches), [b.numel for b in blocks], settings)
    if on_estimate is not None:
        on_estimate(cost)
    done = 0
    phase_totals = phase_steps(cost)
    phase_done: dict[str, int] = {}

    def tick(label: str) -> None:
        nonlocal done
        done += 1
        phase_done[label] = phase_done.get(label, 0) + 1
        meter.tick(label)
        if progress is not None:
            n = phase_done[label]
            progress(n, max(phase_totals.get(label, n), n), label)

    def phase(name: str, compute: Callable[[], Any], label: str | None = None) -> Any:
        """``compute()``, or its saved value when resuming (ticks and operator notes restored too);
        ``label``: the plan's phase the work is metered under (None: the caller begins it)."""
        nonlocal done
        saved = resume.load(name) if resume is not None else None
        if saved is not None:
            done += saved["ticks"]
            op.notes.extend(saved["notes"])
            return saved["value"]
        ticks, notes = done, len(op.notes)
        if label is not None:
            meter.begin(label)
        value = compute()
        if resume is not None:
            resume.save(name, {"value": value, "ticks": done - ticks, "notes": op.notes[notes:]})
        return value

    start = time.perf_counter()
    lz = dens = None
    if cost.exact_full:
        lz = dens = phase(
            "exact_hessian", lambda: dense_spectrum(_Counted(op, tick, "exact Hessian"), top_k=settings.top_k),
            "exact Hessian",
        )
    elif settings.full:
        lz = phase("lanczos", lambda: lanczos(
            _Counted(op, tick, "Lanczos"), settings.top_k, which="both", max_steps=settings.lanczos_steps,
            seed=settings.seed,
        ), "Lanczos")  # fmt: skip
        dens = phase("slq", lambda: slq(
            _Counted(op, tick, "SLQ"), num_probes=settings.probes, steps=settings.steps, seed=settings.seed,
            reorthogonalize=settings.reorthogonalize,
        ), "SLQ")  # fmt: skip
    results: list[SLQResult | ExactSpectrum] = []
    backwards = 0
    if blocks:
        results, backwards = block_spectra(op, blocks, settings, tick, phase, meter)
        zero = [
            b.name for b, r in zip(blocks, results, strict=True) if r.ritz_max == 0.0 and r.ritz_min == 0.0
        ]
        if zero:
            block_notes = (*block_notes, f"{len(zero)} block(s) have an exactly zero Hessian on these batches "
                           f"(e.g. embedding rows of tokens absent from them): {', '.join(zero[:5])}"
                           + (", ..." if len(zero) > 5 else ""))  # fmt: skip
    op.notes[:] = list(dict.fromkeys(op.notes))  # a resumed run meets the graph notes again
    seconds = time.perf_counter() - start
    actual = tuple(meter.finish())
    if progress is not None:
        progress(0, 0, "done")
    return HessianReport(
        settings=settings, cost=cost, dim=op.dim, lanczos=lz, density=dens, blocks=tuple(blocks),
        block_results=tuple(results), num_hvps=done, seconds=seconds, notes=tuple(op.notes) + tuple(block_notes),
        weighting=op.weighting, num_block_backwards=backwards, dtype=str(op.dtype).replace("torch.", ""),
        plan=plan, actual=actual,
    )  # fmt: skip
