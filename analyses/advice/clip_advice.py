"""Spectral-clipping advice: a clip threshold c per layer group (raised to keep headroom over today's
weights) and, per matrix, the spikes, weight bound, Newton-Schulz steps and step size at that c."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from hessian_spectra.analyses.advice import clipping, pc_layer
from hessian_spectra.analyses.advice.inputs import MatrixInput
from hessian_spectra.io import json_safe

#: Paper clip thresholds: c = 5 at 160M parameters, c = 10 at 0.78-1.5B; results flat for c in [5, 50].
CLIP_C_SMALL, CLIP_C_LARGE, CLIP_C_MAX = 5.0, 10.0, 50.0
CLIP_LARGE_MODEL_PARAMS = 500_000_000
#: The steady-state weight bound c/lambda*sqrt(max(1, r/c)) should leave this headroom over today's sigma_max.
CLIP_HEADROOM = 1.5
#: Per-step spectral change lr*c*sqrt(max(1, r/c)) above this fraction of sigma_max is flagged as large.
CLIP_STEP_CHANGE_WARN = 0.05


@dataclass(frozen=True)
class ClipMatrixReport:
    """Spectral-clipping findings for one matrix (the weights' own spectrum and an Adam-like update proxy).

    ``sigma_max``, ``mp_*`` and ``spikes`` describe the weights with the one spike definition of the weights
    probe (:func:`hessian_spectra.weights.marchenko.marchenko_pastur`: singular values above the fitted MP
    edge plus its 99% Tracy-Widom margin, so ``n_spikes`` equals weights.csv's ``mp_n_spikes``); ``weight_norm_bound`` = c/lambda*sqrt(max(1, r/c)) and ``bound_ratio`` =
    sigma_max / bound (> 1: clipping with this decay would pull the weights down). The update proxy is an
    iid unit-entry (sign-like, Adam-normalised) matrix: ``update_sigma_typical`` = sqrt(r) + sqrt(c) (its MP
    edge), ``update_sigma_bound`` = sqrt(r c) (any update with |entries| <= 1); ``ns_steps`` /
    ``ns_steps_typical`` the Newton-Schulz steps for those; ``soft_hard_gap`` on the proxy's MP spectrum;
    ``step_change_ratio`` = lr*c*sqrt(max(1, r/c)) / sigma_max, the largest relative change of the top
    singular value in one step.
    """

    name: str
    role: str
    group: str
    shape: tuple[int, int]
    sigma_max: float
    mp_noise: float
    mp_edge: float
    spike_threshold: float
    n_spikes: int
    spikes: tuple[float, ...]
    c: float
    weight_norm_bound: float
    bound_ratio: float
    update_sigma_typical: float
    update_sigma_bound: float
    ns_steps: int
    ns_steps_typical: int
    soft_hard_gap: dict[str, float]
    step_change_ratio: float | None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["shape"] = list(self.shape)
        d["spikes"] = list(self.spikes)
        return json_safe(d)


@dataclass(frozen=True)
class ClipGroup:
    """The recommended clip threshold for one layer group, with its reason."""

    group: str
    c: float
    reason: str
    n_matrices: int
    max_sigma: float
    steps_to_steady_state: float | None

    def to_dict(self) -> dict[str, Any]:
        return json_safe(dict(self.__dict__))


def clip_group(role: str) -> str:
    """Layer group for clip thresholds: attention, mlp, embedding, head or other."""
    if role in ("q", "k", "v", "qkv", "attn_out"):
        return "attention"
    if role.startswith("mlp_"):
        return "mlp"
    if role in ("embedding", "position_embedding"):
        return "embedding"
    if role in ("lm_head", "classifier"):
        return "head"
    return "other"


def _aspect_factor(rows: int, cols: int) -> float:
    return math.sqrt(max(1.0, rows / cols))


def clip_groups(
    items: Iterable[MatrixInput],
    weight_decay: float | None,
    lr: float | None = None,
    n_params: int | None = None,
) -> tuple[ClipGroup, ...]:
    """Recommended c per group: the paper's c for the model size, raised so that the steady-state weight
    bound c/lambda*sqrt(max(1, r/c)) keeps CLIP_HEADROOM over the group's largest current sigma_max."""
    items = [m for m in items if m.role not in ("norm", "bias")]
    if n_params is None:
        n_params = sum(m.shape[0] * m.shape[1] for m in items)
    base = CLIP_C_LARGE if n_params >= CLIP_LARGE_MODEL_PARAMS else CLIP_C_SMALL
    groups: dict[str, list[MatrixInput]] = {}
    for m in items:
        groups.setdefault(clip_group(m.role), []).append(m)
    out = []
    for g, ms in sorted(groups.items()):
        max_sigma = max(float(np.max(m.singular_values)) for m in ms)
        size = f"{n_params / 1e6:.3g}M" if n_params >= 1e6 else f"{n_params:,}"
        why = f"paper default c = {base:g} for a {size}-parameter model"
        c = base
        if weight_decay and weight_decay > 0:
            needed = max(
                weight_decay * CLIP_HEADROOM * float(np.max(m.singular_values)) / _aspect_factor(*m.shape)
                for m in ms
            )
            if needed > c:
                c = float(needed)
                why = (
                    f"raised from {base:g} so that the weight bound c/lambda*sqrt(max(1, r/c)) (lambda = {weight_decay:g}) "
                    f"keeps {CLIP_HEADROOM}x headroom over the group's sigma_max {max_sigma:.3g}"
                )
                if c > CLIP_C_MAX:
                    why += f"; above the paper's validated range (c <= {CLIP_C_MAX:g})"
            else:
                bound = min(weight_norm(m, c, weight_decay) for m in ms)
                why += f"; the weight bound ({bound:.3g} for the tightest matrix) is not binding on today's weights"
        else:
            why += "; no weight decay given, so clipping bounds the update but not the weights"
        steady = 1.0 / (lr * weight_decay) if lr and weight_decay else None
        out.append(ClipGroup(g, c, why, len(ms), max_sigma, steady))
    return tuple(out)


def weight_norm(m: MatrixInput, c: float, weight_decay: float) -> float:
    """Steady-state bound for one matrix (see :func:`hessian_spectra.analyses.advice.clipping.weight_norm_bound`)."""
    return clipping.weight_norm_bound(c, weight_decay, *m.shape)


def _update_proxy_spectrum(rows: int, cols: int) -> np.ndarray:
    """Singular values of an iid sign-like (Adam-normalised) update with unit entries, at MP classical
    locations: the spectrum the soft clip typically sees."""
    n, m = max(rows, cols), min(rows, cols)
    quantile, edge = pc_layer._mp_sigma_quantile_fn(n / m)
    return quantile((np.arange(m) + 0.5) / m) * math.sqrt(n)


def clip_report(
    item: MatrixInput, c: float, weight_decay: float | None, lr: float | None = None
) -> ClipMatrixReport:
    """Spectral-clipping analysis of one matrix at threshold c."""
    s = np.sort(np.asarray(item.singular_values, dtype=np.float64))[::-1]
    rows, cols = item.shape
    from hessian_spectra.weights.marchenko import marchenko_pastur

    mp = marchenko_pastur(s, (rows, cols))
    threshold = mp.bulk_edge + mp.margin
    spikes = s[s > threshold]
    bound = clipping.weight_norm_bound(c, weight_decay or 0.0, rows, cols)
    typical = math.sqrt(rows) + math.sqrt(cols)
    worst = math.sqrt(rows * cols)
    step = lr * c * _aspect_factor(rows, cols) / float(s[0]) if lr and s[0] > 0 else None
    return ClipMatrixReport(
        item.name, item.role, clip_group(item.role), (rows, cols), float(s[0]), mp.noise_sigma, mp.bulk_edge,
        threshold, int(spikes.size), tuple(float(v) for v in spikes[:10]), c, bound, float(s[0]) / bound,
        typical, worst, clipping.newton_schulz_steps(worst / c), clipping.newton_schulz_steps(typical / c),
        clipping.soft_hard_gap(_update_proxy_spectrum(rows, cols), c), step,
    )  # fmt: skip
