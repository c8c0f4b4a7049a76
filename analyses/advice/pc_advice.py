"""PC-layer advice for one matrix: conditioning against an iid matrix of the same shape, the predicted
spectra at levels 1-4, and whether (and at which level) to apply a PC layer for the optimizer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hessian_spectra.analyses.advice import pc_layer, pc_merge
from hessian_spectra.analyses.advice.inputs import MatrixInput
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
        100 * pc_merge.merge_sensitivity(s, level), spectra,
    )  # fmt: skip


def _check_optimizer(optimizer: str) -> str:
    opt = str(optimizer).lower()
    if opt not in OPTIMIZERS:
        raise InputError(None, f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    return opt
