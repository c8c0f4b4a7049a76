"""Running ``spectra track``: every checkpoint of a series through the weights probe, every consecutive pair
through the update spectra, optionally every checkpoint through the Hessian probe, then the clip thresholds
the measured updates imply.

Streaming: one checkpoint is read at a time by the weights probe, two tensors at a time by the update
pass, and only per-matrix metrics (not weight spectra) are kept between checkpoints, so memory stays near
the largest tensor whatever the series length. The Hessian probe loads one model at a time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hessian_spectra.analyses.advice.clip_advice import clip_group
from hessian_spectra.analyses.advice.clip_series import (
    DEFAULT_QUANTILE,
    SeriesClip,
    UpdateSample,
    clip_from_updates,
)
from hessian_spectra.checkpoints.series import CheckpointSeries
from hessian_spectra.errors import InputError
from hessian_spectra.weights.plan import WeightsSettings

__all__ = ["TrackSettings", "TrackResult", "track_series"]

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class TrackSettings:
    """What ``spectra track`` computes. ``lr``: a constant learning rate (overrides any logged in
    trainer_state.json); ``weight_decay``: the decoupled decay lambda (removed from the updates before the
    clip rule); ``keep_values``: singular values of each dW kept in the JSON (None: all)."""

    weights: WeightsSettings = field(default_factory=WeightsSettings)
    lr: float | None = None
    weight_decay: float | None = None
    clip_quantile: float = DEFAULT_QUANTILE
    keep_values: int | None = None

    def validate(self) -> None:
        for flag, value in (("--lr", self.lr), ("--weight-decay", self.weight_decay)):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise InputError(flag, f"must be a non-negative number, got {value}")
        if not (0.0 < self.clip_quantile <= 1.0):
            raise InputError("--clip-quantile", f"must be in (0, 1], got {self.clip_quantile}")
        if self.keep_values is not None and self.keep_values < 0:
            raise InputError("--keep-values", f"must be >= 0, got {self.keep_values}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights.to_dict(), "lr": self.lr, "weight_decay": self.weight_decay,
            "clip_quantile": self.clip_quantile, "keep_values": self.keep_values,
        }  # fmt: skip


@dataclass(frozen=True, eq=False)
class TrackResult:
    """Everything ``spectra track`` measured: per checkpoint the matrix metrics (and Hessian summary), per
    interval the update metrics, and the clip thresholds."""

    series: CheckpointSeries
    settings: TrackSettings
    checkpoints: tuple[dict[str, Any], ...]
    updates: tuple[dict[str, Any], ...]
    clip: SeriesClip
    hessian: tuple[dict[str, Any], ...] | None
    seconds: float
    notes: tuple[str, ...] = ()


def _matrix_rows(report: Any) -> list[dict[str, Any]]:
    """Per matrix of a weights report: identity and metrics (spectra dropped to bound memory)."""
    rows = []
    for m in report.matrices:
        metrics = m.metrics.to_dict() if m.metrics is not None else {}
        metrics.pop("name", None)
        metrics.pop("shape", None)
        rows.append({
            "name": m.name, "tensor_name": m.tensor_name, "kind": m.kind, "role": m.role,
            "group": clip_group(m.role), "shape": list(m.shape), "status": m.status, "metrics": metrics,
        })  # fmt: skip
    return rows


def _interval(series: CheckpointSeries, i: int, settings: TrackSettings) -> dict[str, Any]:
    """Steps, summed learning rate and decay coefficient of interval i -> i + 1."""
    steps = series.steps_between(i)
    if settings.lr is not None:
        lr_sum = settings.lr * steps if steps is not None else None
        note = "--lr" if steps is not None else "--lr given but the steps between checkpoints are unknown"
    else:
        lr_sum, note = series.lr_sum(i)
    decay = settings.weight_decay * lr_sum if settings.weight_decay and lr_sum else 0.0
    return {"steps": steps, "lr_sum": lr_sum, "lr_source": note, "decay": decay}


def track_series(
    series: CheckpointSeries,
    settings: TrackSettings | None = None,
    *,
    hessian: Callable[[Any], dict[str, Any]] | None = None,
    progress: Progress | None = None,
) -> TrackResult:
    """Run the series (see the module docstring). ``hessian(entry)`` (optional) returns the Hessian
    summary of one checkpoint (:mod:`hessian_spectra.analyses.track.hessian`). ``progress(done, total,
    label)`` counts checkpoints and intervals."""
    from hessian_spectra.weights.probe import analyze_weights
    from hessian_spectra.weights.updates import update_spectra

    settings = settings or TrackSettings()
    settings.validate()
    n = len(series.entries)
    total = n + (n - 1) + (n if hessian is not None else 0)
    done = 0

    def tick(label: str) -> None:
        nonlocal done
        if progress is not None:
            progress(done, total, label)
        done += 1

    started = time.perf_counter()
    checkpoints: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    samples: list[UpdateSample] = []
    hess: list[dict[str, Any]] = []
    norms: dict[str, float] = {}
    n_params = None
    for i, entry in enumerate(series.entries):
        tick(f"weights {entry.path.name}")
        report = analyze_weights(entry.path, settings.weights)
        if not report.matrices:
            raise InputError(entry.path, "no weight matrices to analyse (every tensor was skipped)")
        n_params = sum(math.prod(r.shape) for r in report.inventory)
        checkpoints.append({
            "step": entry.step, "path": str(entry.path), "step_source": entry.step_source, "notes": list(report.notes),
            "matrices": _matrix_rows(report), "seconds": report.provenance.get("analysis_seconds"),
        })  # fmt: skip
        new_norms = {m.name: float(m.metrics.sigma_max) for m in report.matrices
                     if m.metrics is not None and m.metrics.sigma_max is not None}  # fmt: skip
        del report
        if i > 0:
            prev = series.entries[i - 1]
            tick(f"updates {prev.path.name} -> {entry.path.name}")
            info = _interval(series, i - 1, settings)
            rep = update_spectra(
                prev.path, entry.path, settings.weights, weight_norms=norms, decay=info["decay"]
            )
            updates.append({
                "from_step": prev.step, "to_step": entry.step, **info, "seconds": rep.seconds,
                "skipped": [list(s) for s in rep.skipped],
                "matrices": [m.to_dict(settings.keep_values) for m in rep.matrices],
            })  # fmt: skip
            for m in rep.matrices:
                if m.name != m.tensor_name and m.kind in ("q", "k", "v"):
                    continue  # a view of a fused QKV parameter: the optimizer clips the whole parameter
                sig = m.decayed_sigma_max if m.decayed_sigma_max is not None else m.sigma_max
                if sig is not None and m.status != "nonfinite":
                    samples.append(UpdateSample(
                        m.name, m.role, m.shape, prev.step, entry.step, info["steps"], sig, info["lr_sum"],
                        m.decayed_sigma_max is not None,
                    ))  # fmt: skip
        norms = new_norms
        if hessian is not None:
            tick(f"hessian {entry.path.name}")
            hess.append({"step": entry.step, **hessian(entry)})
    if progress is not None:
        progress(total, total, "done")
    clip = clip_from_updates(
        samples, quantile=settings.clip_quantile, n_params=n_params, weight_decay=settings.weight_decay,
        lr=settings.lr,
    )  # fmt: skip
    return TrackResult(
        series=series, settings=settings, checkpoints=tuple(checkpoints), updates=tuple(updates), clip=clip,
        hessian=tuple(hess) if hessian is not None else None, seconds=time.perf_counter() - started,
        notes=series.notes,
    )  # fmt: skip
