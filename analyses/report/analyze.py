"""Running the ``spectra analyze`` report on a live model: every probe (weights, Hessian, heterogeneity,
per-head structure, recommendations) in turn, giving the report.json document and its figures as PNG bytes."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from hessian_spectra.analyses.report.document import PARTITION_FILE, build_document
from hessian_spectra.analyses.report.plots import make_figures

__all__ = ["AnalyzeOptions", "Analysis", "analyze_model"]

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class AnalyzeOptions:
    """What :func:`analyze_model` runs besides the Hessian probe (whose budget is a HessianSettings)."""

    weights: bool = True
    structure: bool = True
    structure_max_columns: int = 1024
    recommendations: bool = True
    optimizer: str = "adamw"
    n_heads: int | None = None
    #: where the weights probe runs (None/"cpu": the numpy/CPU path; "cuda:N": batched GPU SVDs)
    weights_device: str | None = None

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


@dataclass(frozen=True)
class Analysis:
    """What :func:`analyze_model` gives: the report.json document, the figures (PNG bytes by key) and the
    report folder's attachments (file name -> JSON-able dict). Unpacks as ``doc, figures``."""

    doc: dict[str, Any]
    figures: dict[str, bytes]
    attachments: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.doc, self.figures))


def _partition(model: Any, seed: int, n_heads: int | None) -> tuple[Any, dict[str, Any] | None]:
    """The model's Adam-mini partition and its partition.json content (None, None when no rule applies);
    a model without an HF config gets its heads from ``n_heads`` or the model (as ``--blocks adam-mini``)."""
    from hessian_spectra.analyses.partitions.blockings import heads_config
    from hessian_spectra.analyses.partitions.build import partition_model
    from hessian_spectra.weights.provenance import provenance

    try:
        config = heads_config(model, n_heads) if getattr(model, "config", None) is None else None
        part = partition_model(model, config)
    except Exception:  # noqa: BLE001 - a model the partition rules cannot read gets no partition advice
        return None, None
    if not part.entries:
        return None, None
    content = part.to_dict()
    content.update(source=type(model).__name__, provenance=provenance(seed))
    return part, content


def analyze_model(
    model: Any,
    batches: Any,
    loss: Any,
    settings: Any,
    *,
    source: str,
    options: AnalyzeOptions | None = None,
    weights_source: Any = None,
    progress: Progress | None = None,
    weights_progress: Progress | None = None,
    on_estimate: Callable[[Any], None] | None = None,
    on_plan: Callable[[Any], None] | None = None,
    extra: Mapping[str, Any] | None = None,
    kind: str = "analyze",
    inputs: Mapping[str, Any] | None = None,
    clip_source: Any = None,
    resume: Any = None,
) -> Analysis:
    """Run the Hessian probe, heterogeneity, head structure, weights probe and recommendations on
    ``model``; return an :class:`Analysis` (unpacks as ``(document, figures)``; the Adam-mini partition is
    its ``partition.json`` attachment). ``inputs``: what the model and data came from
    (:mod:`hessian_spectra.analyses.report.inputs`); ``clip_source``: see
    :func:`hessian_spectra.analyses.findings.collect.build_findings`. ``weights_source`` (default: the live model) is what the
    weights probe reads: a checkpoint path or the module itself. The blocks follow ``settings.blocks``
    (Adam-mini blocks via :func:`hessian_spectra.analyses.partitions.blockings.hessian_blocks`). ``kind``: "analyze", or "hessian"
    for the Hessian part alone (``spectra hessian``). ``resume``: a
    :class:`~hessian_spectra.curvature.resume.ResumeStore` for the Hessian phases. The model is never modified."""
    from hessian_spectra.analyses.heterogeneity.blocks import spectra_from_hessian
    from hessian_spectra.analyses.heterogeneity.verdict import analyze_heterogeneity
    from hessian_spectra.analyses.partitions.blockings import hessian_blocks
    from hessian_spectra.curvature.probe import run_hessian

    started = datetime.now(timezone.utc)
    options = options or AnalyzeOptions()
    choice = hessian_blocks(model, settings)
    settings = choice.settings
    heads = None
    if options.structure:
        from hessian_spectra.analyses.head_structure import attention_heads, head_columns

        heads = options.n_heads or settings.n_heads or attention_heads(model)
    columns = (
        head_columns(model, heads, max_columns=options.structure_max_columns, seed=settings.seed)
        if heads
        else []
    )
    hess = run_hessian(
        model, batches, loss, settings, blocks=choice.blocks, block_notes=choice.notes, progress=progress,
        on_estimate=on_estimate, resume=resume, on_plan=on_plan,
        column_work=[("head structure", columns)] if columns else (),
    )  # fmt: skip
    het = (
        analyze_heterogeneity(spectra_from_hessian(hess), dtype=hess.dtype, seed=settings.seed)
        if hess.block_results
        else None
    )
    structure = None
    if heads:
        from hessian_spectra.analyses.head_structure import head_structure
        from hessian_spectra.curvature.plan_meter import measure_phase

        with measure_phase("head structure", model, enabled=hess.plan is not None) as phase:
            structure = head_structure(
                model, batches, loss, heads, max_columns=options.structure_max_columns, seed=settings.seed
            )
        if phase.done:
            phase.done.block_backwards = structure.num_hvps
            hess = replace(hess, actual=(*hess.actual, phase.done))
    weights = recs = None
    if options.weights:
        from hessian_spectra.weights.plan import WeightsSettings
        from hessian_spectra.weights.probe import analyze_weights

        weights = analyze_weights(
            model if weights_source is None else weights_source,
            WeightsSettings(seed=settings.seed),
            progress=weights_progress,
            device=options.weights_device,
        )
        if options.recommendations:
            from hessian_spectra.analyses.advice.inputs import inputs_from_weights_report
            from hessian_spectra.analyses.advice.recommendations import recommend

            blocks = {r["name"]: r for r in hess.block_summary()}
            recs = recommend(
                inputs_from_weights_report(weights), options.optimizer, hessian=blocks or None,
                n_params=sum(p.numel() for p in model.parameters()), seed=settings.seed,
            )  # fmt: skip
    part, part_doc = _partition(model, settings.seed, options.n_heads or settings.n_heads)
    doc = build_document(
        source=source, seed=settings.seed, hessian=hess, heterogeneity=het, structure=structure,
        weights=weights, recommendations=recs, partition=part,
        model_info={"class": type(model).__name__, "parameters": int(sum(p.numel() for p in model.parameters()))},
        settings={"hessian": settings.to_dict(), "analyze": options.to_dict()}, extra=extra, kind=kind,
        inputs=inputs, started=started, clip_source=clip_source,
    )  # fmt: skip
    from hessian_spectra.analyses.findings.checks import flat_blocks

    figures = make_figures(hess, het, weights, flat=set(flat_blocks(doc)))
    return Analysis(doc, figures, {PARTITION_FILE: part_doc} if part_doc else {})
