"""Recommendations from weight spectra: where a PC layer helps, which spectral-clip threshold to use, and
(with Hessian results) which blocks to look at first.

Inputs are plain: per matrix a name, a role (see :mod:`hessian_spectra.weights.roles`), a shape and its singular values.
Every threshold used is recorded in the output with the reason for it (:data:`THRESHOLDS`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from hessian_spectra.analyses.advice import clipping, pc_layer
from hessian_spectra.errors import InputError
from hessian_spectra.io import json_safe

OPTIMIZERS = ("adamw", "muon")
#: PC level the paper uses with each optimizer.
PAPER_LEVEL = {"adamw": 4, "muon": 2}
PC_DEFAULT_ROLES = frozenset({"mlp_gate", "mlp_up", "mlp_down", "mlp_in", "mlp_out", "attn_out"})
PC_QKV_ROLES = frozenset({"q", "k", "v", "qkv"})
PC_NEVER_ROLES = frozenset({"embedding", "position_embedding", "lm_head", "classifier", "norm", "bias"})
#: Apply PC when the modified condition number is at least this many times the iid value of the shape.
MODCOND_RATIO_THRESHOLD = 2.0
#: Paper clip thresholds: c = 5 at 160M parameters, c = 10 at 0.78-1.5B; results flat for c in [5, 50].
CLIP_C_SMALL, CLIP_C_LARGE, CLIP_C_MAX = 5.0, 10.0, 50.0
CLIP_LARGE_MODEL_PARAMS = 500_000_000
#: The steady-state weight bound c/lambda*sqrt(max(1, r/c)) should leave this headroom over today's sigma_max.
CLIP_HEADROOM = 1.5
#: Per-step spectral change lr*c*sqrt(max(1, r/c)) above this fraction of sigma_max is flagged as large.
CLIP_STEP_CHANGE_WARN = 0.05

THRESHOLDS: dict[str, dict[str, Any]] = {
    "pc_roles": {
        "value": sorted(PC_DEFAULT_ROLES),
        "reason": "the PC-layer paper preconditions MLP gate/up/down and the attention output; Q/K/V only on "
        "request (include_qkv); never embeddings, the head or norms",
    },
    "pc_modcond_ratio": {
        "value": MODCOND_RATIO_THRESHOLD,
        "reason": "apply PC when sigma_1 / mean(bottom 10% of sigma) is at least 2x that of an iid matrix of the "
        "same shape (Marchenko-Pastur): the matrix has a heavier small-singular-value tail than a random "
        "initialisation, which is the ill-conditioning PC targets",
    },
    "pc_level": {
        "value": dict(PAPER_LEVEL),
        "reason": "the paper's settings: level 4 with AdamW; level 2 with Muon, whose orthogonalised updates already "
        "equalise singular values of the update",
    },
    "pc_safe_ratio": {
        "value": {k: round(pc_layer.safe_ratio(k), 4) for k in pc_layer.LEVELS},
        "reason": f"PC is safe while sigma_max / s_hat stays below this: beyond it p_k amplifies the top direction "
        f"past p_max + {pc_layer.SAFE_AMPLIFY_TOL} or shrinks it by more than {pc_layer.SAFE_SHRINK_TOL:.0%} "
        f"(level 4: p(1.2) = 1.25)",
    },
    "clip_c": {
        "value": {"small": CLIP_C_SMALL, "large": CLIP_C_LARGE, "max_validated": CLIP_C_MAX},
        "reason": "SPECTRA used c = 5 at 160M and c = 10 at >= 0.78B parameters (results flat for c in 5-50, c = 1 "
        f"hurts); c is raised when the weight bound c/lambda*sqrt(max(1, r/c)) would sit below {CLIP_HEADROOM}x "
        "a group's current sigma_max",
    },
    "clip_step_change": {
        "value": CLIP_STEP_CHANGE_WARN,
        "reason": "a clipped update moves sigma_max by at most lr*c*sqrt(max(1, r/c)); more than this fraction of "
        "today's sigma_max per step is flagged",
    },
    "clip_ns_steps": {
        "value": "ceil(ln(1 + (sigma/c)^2) / ln 2.25) + 4",
        "reason": "coupled Newton-Schulz grows a small eigenvalue by 2.25 per step, then converges quadratically; "
        "accurate to 1e-5 (tested) for sigma_max/c <= 10. Given for the worst Adam-like update "
        "(|entries| <= 1, sigma <= sqrt(rows*cols)) and a typical one (sqrt(rows) + sqrt(cols))",
    },
}


@dataclass(frozen=True)
class MatrixInput:
    """One weight matrix as the recommendation engine sees it."""

    name: str
    role: str
    shape: tuple[int, int]
    singular_values: np.ndarray = field(repr=False, compare=False)

    @classmethod
    def from_tensor(cls, name: str, tensor: torch.Tensor, role: str | None = None) -> MatrixInput:
        """Singular values in float64 via :func:`hessian_spectra.weights.svd.singular_values`; role from the name if not given."""
        from hessian_spectra.weights.roles import tensor_role
        from hessian_spectra.weights.svd import singular_values

        if tensor.ndim != 2:
            raise InputError(None, f"{name}: expected a 2-D matrix, got shape {tuple(tensor.shape)}")
        role = tensor_role(name) if role is None else role
        return cls(name, role, (int(tensor.shape[0]), int(tensor.shape[1])), singular_values(tensor))


def inputs_from_weights_report(report: Any) -> list[MatrixInput]:
    """MatrixInputs from a :class:`hessian_spectra.weights.results.WeightsReport` (matrices with a full, finite spectrum)."""
    out = []
    for m in report.matrices:
        s = getattr(m, "singular_values", None)
        if m.status != "ok" or s is None or not np.all(np.isfinite(s)):
            continue
        out.append(MatrixInput(m.name, m.role, tuple(m.shape), np.asarray(s, dtype=np.float64)))
    return out


@dataclass(frozen=True)
class PCPrediction:
    """Spectrum statistics of gamma * s_hat * p_k(W / s_hat) with s_hat = sigma_max (gamma = 1)."""

    level: int
    condition_number: float
    modified_condition_number: float
    modcond_ratio_to_iid: float
    stable_rank: float

    def to_dict(self) -> dict[str, Any]:
        return json_safe(self.__dict__)


@dataclass(frozen=True)
class PCMatrixReport:
    """PC-layer findings for one matrix.

    ``modcond_ratio`` = modified condition number / iid value for the shape; ``predictions`` for levels 1-4
    (s_hat = sigma_max); ``apply``/``level``/``reason`` the decision for the optimizer; ``min_sufficient_level``
    the lowest level whose prediction is under the threshold; ``spectral_norm_ratio`` sigma_max / s_hat after
    10 cold power iterations (median and worst of 32 seeded starts); ``safety_margin`` = safe_ratio / worst
    (< 1: unsafe without warm start); ``extra_flops`` per forward at the optimizer's level;
    ``merge_sensitivity_per_1pct``: percent change of the merged weight for a 1% error in s_hat.
    """

    name: str
    role: str
    shape: tuple[int, int]
    candidate: bool
    condition_number: float
    modified_condition_number: float
    iid_modified_condition_number: float
    modcond_ratio: float
    stable_rank: float
    predictions: tuple[PCPrediction, ...]
    apply: bool
    level: int | None
    min_sufficient_level: int | None
    reason: str
    spectral_norm_ratio: dict[str, float]
    safe_ratio: float | None
    safety_margin: float | None
    extra_flops: dict[str, float] | None
    merge_sensitivity_per_1pct: float | None
    predicted_spectra: dict[int, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self, include_spectra: bool = False) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("predictions", "predicted_spectra")}
        d["shape"] = list(self.shape)
        d["predictions"] = [p.to_dict() for p in self.predictions]
        if include_spectra:
            d["predicted_spectra"] = {str(k): v.tolist() for k, v in self.predicted_spectra.items()}
        return json_safe(d)


@dataclass(frozen=True)
class ClipMatrixReport:
    """Spectral-clipping findings for one matrix (the weights' own spectrum and an Adam-like update proxy).

    ``sigma_max``, ``mp_*`` and ``spikes`` describe the weights (spikes: singular values above the fitted MP
    edge plus a Tracy-Widom margin); ``weight_norm_bound`` = c/lambda*sqrt(max(1, r/c)) and ``bound_ratio`` =
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


@dataclass(frozen=True)
class Recommendations:
    """Everything ``spectra recommend`` writes: per-matrix PC and clip findings, groups, priorities."""

    optimizer: str
    lr: float | None
    weight_decay: float | None
    include_qkv: bool
    thresholds: dict[str, dict[str, Any]]
    pc: tuple[PCMatrixReport, ...]
    clip_groups: tuple[ClipGroup, ...]
    clip: tuple[ClipMatrixReport, ...]
    priority: tuple[dict[str, Any], ...] | None
    summary: dict[str, Any]
    notes: tuple[str, ...] = ()

    def to_dict(self, include_spectra: bool = False) -> dict[str, Any]:
        return json_safe(
            {
                "schema_version": "hessian-spectra/recommend/1",
                "optimizer": self.optimizer,
                "lr": self.lr,
                "weight_decay": self.weight_decay,
                "include_qkv": self.include_qkv,
                "thresholds": self.thresholds,
                "summary": self.summary,
                "notes": list(self.notes),
                "pc": [r.to_dict(include_spectra) for r in self.pc],
                "clip_groups": [g.to_dict() for g in self.clip_groups],
                "clip": [r.to_dict() for r in self.clip],
                "priority": None if self.priority is None else list(self.priority),
            }
        )


# ----------------------------------------------------------------------------------------------------
# PC layer


def pc_report(
    item: MatrixInput, optimizer: str = "adamw", include_qkv: bool = False, seed: int = 0
) -> PCMatrixReport:
    """PC-layer analysis of one matrix: conditioning vs iid, predicted spectra for levels 1-4, decision."""
    optimizer = _check_optimizer(optimizer)
    s = np.sort(np.asarray(item.singular_values, dtype=np.float64))[::-1]
    rows, cols = item.shape
    if s.size == 0 or not np.all(np.isfinite(s)) or s[0] <= 0:
        raise InputError(None, f"{item.name}: singular values must be finite with sigma_max > 0")
    iid = pc_layer.iid_modified_condition_number(rows, cols)
    mcn = pc_layer.modified_condition_number(s)
    preds, spectra = [], {}
    for k in pc_layer.LEVELS:
        ps = pc_layer.predicted_singular_values(s, k)
        spectra[k] = ps
        pm = pc_layer.modified_condition_number(ps)
        preds.append(PCPrediction(k, pc_layer.condition_number(ps), pm, pm / iid, pc_layer.stable_rank(ps)))
    roles = PC_DEFAULT_ROLES | (PC_QKV_ROLES if include_qkv else frozenset())
    candidate = item.role in roles
    ratio = mcn / iid
    level = PAPER_LEVEL[optimizer]
    sufficient = next((p.level for p in preds if p.modcond_ratio_to_iid < MODCOND_RATIO_THRESHOLD), None)
    pi = pc_layer.power_iteration_ratio(s, seed=seed)
    safe = pc_layer.safe_ratio(level)
    margin = safe / pi["worst"]
    if not candidate:
        if item.role in PC_NEVER_ROLES:
            why = f"role '{item.role}' is never preconditioned (paper: no PC on embeddings, head, norms)"
        elif item.role in PC_QKV_ROLES:
            why = f"role '{item.role}': Q/K/V are off by default (paper); pass include_qkv to analyse them"
        else:
            why = (
                f"role '{item.role}' is not a PC-layer target (paper: MLP and attention-output linear layers)"
            )
        return PCMatrixReport(
            item.name, item.role, (rows, cols), False, pc_layer.condition_number(s), mcn, iid, ratio,
            pc_layer.stable_rank(s), tuple(preds), False, None, None, why, pi, None, None, None, None, spectra,
        )  # fmt: skip
    target = preds[level - 1]
    apply = ratio >= MODCOND_RATIO_THRESHOLD
    if apply:
        why = (
            f"modified condition number {mcn:.3g} is {ratio:.2f}x the iid value {iid:.3g} (threshold "
            f"{MODCOND_RATIO_THRESHOLD}x); level {level} ({optimizer}) predicts {target.modified_condition_number:.3g} "
            f"({target.modcond_ratio_to_iid:.2f}x iid)"
        )
        if sufficient is not None and sufficient < level:
            why += f"; level {sufficient} would already bring it under the threshold"
    else:
        why = (
            f"modified condition number {mcn:.3g} is only {ratio:.2f}x the iid value {iid:.3g} (< "
            f"{MODCOND_RATIO_THRESHOLD}x): no ill-conditioning for PC to fix"
        )
    if apply and margin < 1:
        why += (
            f"; caution: {pc_layer.POWER_ITERATIONS} cold power iterations can under-estimate sigma_max by "
            f"{pi['worst']:.3f}x > safe {safe:.3f}x: warm-start or run more iterations"
        )
    return PCMatrixReport(
        item.name, item.role, (rows, cols), True, pc_layer.condition_number(s), mcn, iid, ratio,
        pc_layer.stable_rank(s), tuple(preds), apply, level if apply else None,
        sufficient if apply else None, why, pi, safe, margin, pc_layer.extra_forward_flops(rows, cols, level),
        100 * pc_layer.merge_sensitivity(s, level), spectra,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# spectral clipping


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
        why = f"paper default c = {base:g} for a {n_params / 1e6:.1f}M-parameter model"
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
    """Steady-state bound for one matrix (see :func:`hessian_spectra.analyses.recommend.clipping.weight_norm_bound`)."""
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
    mp = clipping.mp_edge(s, rows, cols)
    spikes = s[s > mp["threshold"]]
    bound = clipping.weight_norm_bound(c, weight_decay or 0.0, rows, cols)
    typical = math.sqrt(rows) + math.sqrt(cols)
    worst = math.sqrt(rows * cols)
    step = lr * c * _aspect_factor(rows, cols) / float(s[0]) if lr and s[0] > 0 else None
    return ClipMatrixReport(
        item.name, item.role, clip_group(item.role), (rows, cols), float(s[0]), mp["noise"], mp["edge"],
        mp["threshold"], int(spikes.size), tuple(float(v) for v in spikes[:10]), c, bound, float(s[0]) / bound,
        typical, worst, clipping.newton_schulz_steps(worst / c), clipping.newton_schulz_steps(typical / c),
        clipping.soft_hard_gap(_update_proxy_spectrum(rows, cols), c), step,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# Hessian-aware priority


def priority_ranking(
    reports: Iterable[PCMatrixReport], hessian: Mapping[str, Mapping[str, float]]
) -> tuple[dict[str, Any], ...]:
    """Rank matrices so that blocks both high-curvature (lambda_max) and ill-conditioned (modified
    condition number / iid) come first: score = min of the two percentile ranks (ties by their product).

    Hessian keys are matched to matrix names exactly, or to the tensor name before a '[part]' suffix.
    Matrices without Hessian results follow, ordered by conditioning.
    """
    reports = list(reports)
    rows = []
    for r in reports:
        h = hessian.get(r.name) or hessian.get(r.name.split("[")[0])
        lam = None if h is None else h.get("lambda_max")
        rows.append({"name": r.name, "role": r.role, "modcond_ratio": r.modcond_ratio, "lambda_max": lam,
                     "trace": None if h is None else h.get("trace")})  # fmt: skip
    with_h = [x for x in rows if x["lambda_max"] is not None and math.isfinite(x["lambda_max"])]
    without = [x for x in rows if x not in with_h]
    if with_h:
        curv = _percentiles([x["lambda_max"] for x in with_h])
        cond = _percentiles([x["modcond_ratio"] for x in with_h])
        for x, a, b in zip(with_h, curv, cond, strict=True):
            x.update(
                curvature_pct=a, conditioning_pct=b, score=min(a, b), both_high=bool(a >= 0.5 and b >= 0.5)
            )
            x["_tie"] = a * b
        with_h.sort(key=lambda x: (x["score"], x["_tie"]), reverse=True)
        for x in with_h:
            del x["_tie"]
    for x in without:
        x.update(curvature_pct=None, conditioning_pct=None, score=None, both_high=False)
    without.sort(key=lambda x: x["modcond_ratio"], reverse=True)
    return tuple(json_safe(x) for x in with_h + without)


def _percentiles(values: list[float]) -> list[float]:
    """Percentile rank in (0, 1] (average rank for ties)."""
    from scipy.stats import rankdata

    return [float(v) / len(values) for v in rankdata(values, method="average")]


# ----------------------------------------------------------------------------------------------------
# the engine


def recommend(
    items: Iterable[MatrixInput],
    optimizer: str = "adamw",
    lr: float | None = None,
    weight_decay: float | None = None,
    hessian: Mapping[str, Mapping[str, float]] | None = None,
    include_qkv: bool = False,
    n_params: int | None = None,
    seed: int = 0,
) -> Recommendations:
    """PC-layer and spectral-clipping recommendations for a set of matrices (see the module docstring)."""
    optimizer = _check_optimizer(optimizer)
    for label, val in (("lr", lr), ("weight_decay", weight_decay)):
        if val is not None and (not math.isfinite(val) or val < 0):
            raise InputError(None, f"{label} must be a non-negative number, got {val}")
    items = [m for m in items if m.role not in ("norm", "bias") and min(m.shape) > 1]
    pcs = tuple(pc_report(m, optimizer, include_qkv, seed) for m in items)
    groups = clip_groups(items, weight_decay, lr, n_params)
    c_of = {g.group: g.c for g in groups}
    clips = tuple(clip_report(m, c_of[clip_group(m.role)], weight_decay, lr) for m in items)
    cands = [r for r in pcs if r.candidate]
    level = PAPER_LEVEL[optimizer]
    notes = []

    def gmean(vals: list[float]) -> float | None:
        vals = [v for v in vals if math.isfinite(v) and v > 0]
        return float(math.exp(np.mean(np.log(vals)))) if vals else None

    summary = {
        "n_matrices": len(pcs),
        "pc_candidates": len(cands),
        "pc_apply": sum(r.apply for r in cands),
        "pc_level": level,
        "gmcn": gmean([r.modified_condition_number for r in cands]),
        "gmcn_iid": gmean([r.iid_modified_condition_number for r in cands]),
        "gmcn_predicted": gmean([r.predictions[level - 1].modified_condition_number for r in cands]),
        "pc_extra_flops_per_forward": sum(r.extra_flops["total"] for r in cands if r.apply and r.extra_flops),
        "clip_spikes": sum(r.n_spikes for r in clips),
        "clip_bound_binding": sum(r.bound_ratio > 1 / CLIP_HEADROOM for r in clips),
    }
    if not cands:
        notes.append("no PC candidates (no MLP or attention-output matrices were recognised by role)")
    if any(r.safety_margin is not None and r.safety_margin < 1 for r in cands if r.apply):
        notes.append(
            "some matrices have a small spectral gap: cold power iteration under-estimates sigma_max; warm-start it"
        )
    big_steps = [
        r.name
        for r in clips
        if r.step_change_ratio is not None and r.step_change_ratio > CLIP_STEP_CHANGE_WARN
    ]
    if big_steps:
        notes.append(
            f"{len(big_steps)} matrices (e.g. {big_steps[0]}) can change their top singular value by more than "
            f"{CLIP_STEP_CHANGE_WARN:.0%} in one clipped step (lr*c*sqrt(max(1, r/c)) / sigma_max): lower lr or c"
        )
    if weight_decay is None:
        notes.append(
            "no weight decay given: clip thresholds use the paper defaults and no weight bound is reported"
        )
    priority = priority_ranking(pcs, hessian) if hessian is not None else None
    return Recommendations(
        optimizer,
        lr,
        weight_decay,
        include_qkv,
        THRESHOLDS,
        pcs,
        groups,
        clips,
        priority,
        summary,
        tuple(notes),
    )


def _check_optimizer(optimizer: str) -> str:
    opt = str(optimizer).lower()
    if opt not in OPTIMIZERS:
        raise InputError(None, f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    return opt


# ----------------------------------------------------------------------------------------------------
# markdown


def _f(x: Any, fmt: str = ".3g") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else "nan"
    return format(x, fmt)


def render_markdown(recs: Recommendations, max_rows: int = 200) -> str:
    """The "Recommendations" section of the report as GitHub markdown."""
    s = recs.summary
    lines = [
        "## Recommendations",
        "",
        f"Optimizer: **{recs.optimizer}**, lr: {_f(recs.lr)}, weight decay: {_f(recs.weight_decay)}.",
        "",
        "### PC layer",
        "",
        f"{s['pc_apply']} of {s['pc_candidates']} candidate matrices would benefit from a PC layer at level "
        f"{s['pc_level']}. GMCN {_f(s['gmcn'])} (iid {_f(s['gmcn_iid'])}) -> predicted {_f(s['gmcn_predicted'])}; "
        f"extra cost {_f(s['pc_extra_flops_per_forward'] / 1e9, '.3f')} GFLOP per forward pass.",
        "",
        "| matrix | role | shape | mod. kappa | iid | ratio | level | predicted mod. kappa | PI margin | apply | reason |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    cands = [r for r in recs.pc if r.candidate]
    for r in cands[:max_rows]:
        lvl = r.level or s["pc_level"]
        lines.append(
            f"| `{r.name}` | {r.role} | {r.shape[0]}x{r.shape[1]} | {_f(r.modified_condition_number)} | "
            f"{_f(r.iid_modified_condition_number)} | {_f(r.modcond_ratio, '.2f')} | {r.level or '-'} | "
            f"{_f(r.predictions[lvl - 1].modified_condition_number)} | {_f(r.safety_margin, '.2f')} | "
            f"{'yes' if r.apply else 'no'} | {r.reason} |"
        )
    if len(cands) > max_rows:
        lines.append(f"\n({len(cands) - max_rows} more in recommendations.json)")
    lines += [
        "",
        "### Spectral clipping",
        "",
        "| group | c | matrices | max sigma | reason |",
        "|---|---|---|---|---|",
    ]
    for g in recs.clip_groups:
        lines.append(f"| {g.group} | {_f(g.c)} | {g.n_matrices} | {_f(g.max_sigma)} | {g.reason} |")
    lines += [
        "",
        "| matrix | group | sigma_max | MP edge | spikes | c | weight bound | NS steps (typ/worst) | soft-hard gap |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in recs.clip[:max_rows]:
        lines.append(
            f"| `{r.name}` | {r.group} | {_f(r.sigma_max)} | {_f(r.mp_edge)} | {r.n_spikes} | {_f(r.c)} | "
            f"{_f(r.weight_norm_bound)} | {r.ns_steps_typical}/{r.ns_steps} | {_f(r.soft_hard_gap['frobenius'], '.1%')} |"
        )
    if recs.priority is not None:
        lines += ["", "### Priority (high curvature and ill-conditioned first)", "",
                  "| rank | matrix | lambda_max | trace | mod. kappa / iid | score |", "|---|---|---|---|---|---|"]  # fmt: skip
        for i, p in enumerate(recs.priority[:max_rows], 1):
            lines.append(
                f"| {i} | `{p['name']}` | {_f(p['lambda_max'])} | {_f(p['trace'])} | {_f(p['modcond_ratio'], '.2f')} | "
                f"{_f(p['score'], '.2f')} |"
            )
    lines += ["", "### Thresholds", ""]
    for key, t in recs.thresholds.items():
        lines.append(f"- **{key}** = `{t['value']}`: {t['reason']}")
    if recs.notes:
        lines += ["", "### Notes", ""] + [f"- {n}" for n in recs.notes]
    return "\n".join(lines) + "\n"
