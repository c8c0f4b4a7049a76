"""Spectral-clipping thresholds measured from a run's own updates (a checkpoint series), replacing the
paper-default lookup of :mod:`hessian_spectra.analyses.advice.clip_advice` when consecutive checkpoints exist.

SPECTRA clips the optimizer's update direction U (e.g. AdamW's m / (sqrt(v) + eps), before the learning
rate) at spectral norm c. Between checkpoints at steps a < b an unclipped run moved a matrix by
dW = -sum_s lr_s (U_s + lambda W_s), so the lr-weighted mean update direction is
U_bar = -(dW + lambda (sum_s lr_s) W_a) / sum_s lr_s (to first order in lr * lambda), and its spectral norm
``u = sigma_max(dW + lambda L W_a) / L`` with L = sum_s lr_s is what this module measures per matrix and
interval. By the triangle inequality u <= the lr-weighted mean of the per-step sigma_max(U_s): it is exact
for consecutive steps (b = a + 1) and a LOWER bound otherwise (steps pointing different ways cancel).

The rule: per layer group, c = the ``quantile`` (default 0.9) of u over every matrix and interval of the
group, so that typical updates pass unclipped and only the largest tenth (the spikes clipping guards
against) are clipped. The paper's c (5 below 500M parameters, 10 above) is reported beside it with the
share of measured updates it would clip; a measured c outside the paper's validated 5-50 is flagged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hessian_spectra.analyses.advice import clipping
from hessian_spectra.analyses.advice.clip_advice import (
    CLIP_C_LARGE,
    CLIP_C_MAX,
    CLIP_C_SMALL,
    CLIP_LARGE_MODEL_PARAMS,
    ClipGroup,
    clip_group,
)
from hessian_spectra.errors import InputError
from hessian_spectra.io import json_safe

__all__ = [
    "UpdateSample",
    "SeriesClip",
    "clip_from_updates",
    "read_track_thresholds",
    "DEFAULT_QUANTILE",
    "RULE",
]

DEFAULT_QUANTILE = 0.9
RULE = (
    "c = the {q:g} quantile, over every matrix of the group and every checkpoint interval, of "
    "u = sigma_max(dW + lambda * L * W_before) / L, the spectral norm of the lr-weighted mean update "
    "direction (L = sum of the learning rates over the interval's steps, lambda the decoupled weight "
    "decay); exact per step for consecutive checkpoints, a lower bound when checkpoints are several steps "
    "apart"
)


@dataclass(frozen=True)
class UpdateSample:
    """One matrix over one checkpoint interval: ||dW||_2 (decay-corrected when a decay was given), the
    number of optimizer steps and the summed learning rate over them (None when unknown)."""

    name: str
    role: str
    shape: tuple[int, int]
    from_step: int | None
    to_step: int | None
    steps: int | None
    sigma_max: float
    lr_sum: float | None
    decay_corrected: bool = False

    @property
    def group(self) -> str:
        return clip_group(self.role)

    @property
    def normalized(self) -> float | None:
        """u = sigma_max / sum of learning rates: the mean update direction's spectral norm."""
        return self.sigma_max / self.lr_sum if self.lr_sum else None

    @property
    def per_step(self) -> float | None:
        """||dW||_2 / steps: the mean per-step spectral change of the weights (no learning rate needed)."""
        return self.sigma_max / self.steps if self.steps else None


@dataclass(frozen=True)
class SeriesClip:
    """Clip thresholds per layer group from measured updates, as :class:`ClipGroup` (what ``recommend``
    takes), with the statistics behind them in ``details`` and the rule in ``rule``."""

    groups: tuple[ClipGroup, ...]
    rule: str
    quantile: float
    details: dict[str, dict[str, Any]]
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(
            {
                "rule": self.rule,
                "quantile": self.quantile,
                "groups": [g.to_dict() for g in self.groups],
                "details": self.details,
                "notes": list(self.notes),
            }
        )


def _paper_c(n_params: int | None) -> float:
    return CLIP_C_LARGE if n_params is not None and n_params >= CLIP_LARGE_MODEL_PARAMS else CLIP_C_SMALL


def clip_from_updates(
    samples: Iterable[UpdateSample],
    *,
    quantile: float = DEFAULT_QUANTILE,
    n_params: int | None = None,
    weight_decay: float | None = None,
    lr: float | None = None,
    worst: int = 3,
) -> SeriesClip:
    """Clip threshold c per layer group from update samples (see the module docstring for the rule).

    Groups whose samples have no learning rate keep the paper's c, with the per-step spectral change
    reported instead. ``weight_decay``/``lr`` only fill ``steps_to_steady_state`` (1 / (lr lambda)).
    """
    if not (0.0 < quantile <= 1.0):
        raise InputError("--clip-quantile", f"must be in (0, 1], got {quantile}")
    paper = _paper_c(n_params)
    by_group: dict[str, list[UpdateSample]] = {}
    for s in samples:
        if s.role in ("norm", "bias") or min(s.shape) < 2 or not math.isfinite(s.sigma_max):
            continue
        by_group.setdefault(s.group, []).append(s)
    groups, details, notes = [], {}, []
    steady = 1.0 / (lr * weight_decay) if lr and weight_decay else None
    rule = RULE.format(q=quantile)
    for g, items in sorted(by_group.items()):
        us = np.array([s.normalized for s in items if s.normalized is not None], dtype=np.float64)
        per_step = np.array([s.per_step for s in items if s.per_step is not None], dtype=np.float64)
        max_sigma = max(s.sigma_max for s in items)
        spans = sorted({s.steps for s in items if s.steps is not None})
        info: dict[str, Any] = {
            "n_samples": len(items), "n_with_lr": int(us.size), "paper_c": paper,
            "per_step_sigma_max_median": float(np.median(per_step)) if per_step.size else None,
            "steps_per_interval": spans, "exact_per_step": spans == [1],
            "decay_corrected": all(s.decay_corrected for s in items),
        }  # fmt: skip
        if us.size == 0:
            why = (
                f"paper default c = {paper:g}: no summed learning rate for these intervals, so updates cannot be "
                "put in optimizer units (needs --lr or the learning rates in trainer_state.json, and the steps "
                "between checkpoints)"
            )
            groups.append(ClipGroup(g, paper, why, len(items), max_sigma, steady))
            details[g] = info
            continue
        c = float(np.quantile(us, quantile))
        ranked = sorted((s for s in items if s.normalized is not None), key=lambda s: -s.normalized)  # type: ignore[operator]
        clipped_by_paper = float(np.mean(us > paper))
        info.update(
            u_median=float(np.median(us)), u_quantile=c, u_max=float(us.max()), u_min=float(us.min()),
            share_clipped_at_c=float(np.mean(us > c)), share_clipped_by_paper_c=clipped_by_paper,
            paper_c_shrink_median=float(np.median(us / paper)),
            ns_steps_at_max=clipping.newton_schulz_steps(float(us.max()) / c) if c > 0 else None,
            worst=[{"name": s.name, "from_step": s.from_step, "to_step": s.to_step, "u": s.normalized}
                   for s in ranked[:worst]],
        )  # fmt: skip
        reason = (
            f"measured: {quantile:g} quantile of the update norm u over {us.size} matrix-intervals "
            f"(median {np.median(us):.3g}, max {us.max():.3g})"
            + ("" if spans == [1] else "; checkpoints several steps apart make u a lower bound, so this c "
               "clips more often than the rule intends")
            + f"; the paper's c = {paper:g} would clip {clipped_by_paper:.0%} of these updates"
        )  # fmt: skip
        if not (CLIP_C_SMALL <= c <= CLIP_C_MAX):
            reason += f"; outside the paper's validated range {CLIP_C_SMALL:g}-{CLIP_C_MAX:g}"
        groups.append(ClipGroup(g, c, reason, len(items), max_sigma, steady))
        details[g] = info
    if not any(d.get("decay_corrected") for d in details.values()):
        notes.append(
            "no weight decay given: u includes the decay's shrinkage of the weights (pass --weight-decay)"
        )
    return SeriesClip(tuple(groups), rule, float(quantile), details, tuple(notes))


def read_track_thresholds(path: Any) -> tuple[ClipGroup, ...]:
    """The measured clip thresholds of a ``spectra track`` output (track.json) as :class:`ClipGroup`s;
    InputError naming the file when it is not one."""
    import json
    from pathlib import Path

    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(path, f"not a readable JSON file ({exc})") from None
    groups = doc.get("clip", {}).get("groups") if isinstance(doc, dict) else None
    if not (
        isinstance(doc, dict) and str(doc.get("schema_version", "")).startswith("hessian-spectra/track/")
    ):
        raise InputError(path, "not a track.json written by `spectra track` (schema hessian-spectra/track/N)")
    if not isinstance(groups, list) or not groups:
        raise InputError(path, "no clip thresholds in it (the series had no updates to measure)")
    try:
        return tuple(
            ClipGroup(str(g["group"]), float(g["c"]), str(g["reason"]), int(g["n_matrices"]),
                      float(g["max_sigma"]), g.get("steps_to_steady_state"))
            for g in groups
        )  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(path, f"malformed clip thresholds ({exc!r})") from None
