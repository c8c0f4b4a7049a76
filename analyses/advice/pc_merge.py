"""PC layer merge and convert: between a plain weight and its PC form (gamma, s_hat, power-iteration
vectors), for whole state dicts too. The polynomials and predicted spectra live in :mod:`.pc_layer`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hessian_spectra.analyses.advice.pc_layer import _check_level, apply_pc, p_inverse, p_poly
from hessian_spectra.errors import InputError


@dataclass(frozen=True)
class PCForm:
    """A matrix in PC form: W_eff = gamma * s_hat * p_k(weight / s_hat), s_hat = u^T weight v."""

    weight: torch.Tensor
    gamma: float
    s_hat: float
    u: torch.Tensor
    v: torch.Tensor
    level: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.weight.shape),
            "gamma": self.gamma,
            "s_hat": self.s_hat,
            "level": self.level,
        }


def spectral_estimate(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """s_hat = u^T W v / (|u| |v|) from stored power-iteration vectors."""
    u = u.reshape(-1).to(weight.dtype)
    v = v.reshape(-1).to(weight.dtype)
    if u.numel() != weight.shape[0] or v.numel() != weight.shape[1]:
        raise InputError(
            None,
            f"power-iteration vectors {u.numel()}, {v.numel()} do not match weight {tuple(weight.shape)}",
        )
    return (u @ weight @ v) / (torch.linalg.vector_norm(u) * torch.linalg.vector_norm(v))


def merge_pc(
    weight: torch.Tensor, gamma: float | torch.Tensor, u: torch.Tensor, v: torch.Tensor, level: int
) -> torch.Tensor:
    """Plain weights equal to a PC layer's effective weight: gamma * s_hat * p_k(W / s_hat), s_hat = u^T W v.

    Computed in float64 and returned in the weight's dtype. The result depends on s_hat: see
    :func:`merge_sensitivity` (a 1% error in s_hat moves the merged weight by about 0.8% at level 4).
    """
    w = weight.detach().to(torch.float64)
    s_hat = spectral_estimate(w, u.detach().to(torch.float64), v.detach().to(torch.float64))
    if not torch.isfinite(s_hat) or s_hat <= 0:
        raise InputError(None, f"spectral-norm estimate u^T W v = {float(s_hat)} is not positive")
    g = float(gamma.detach().reshape(-1)[0]) if isinstance(gamma, torch.Tensor) else float(gamma)
    return apply_pc(w, level, s_hat, g).to(weight.dtype)


def merge_sensitivity(
    sigma: np.ndarray, level: int, s_hat: float | None = None, rel_error: float = 0.01
) -> float:
    """Relative Frobenius change of the merged weight when s_hat is off by ``rel_error`` (exact, per
    singular value: the merge is a function of each sigma_i / s_hat). Divide by rel_error for a slope."""
    s = np.asarray(sigma, dtype=np.float64)
    s_hat = float(np.max(s)) if s_hat is None else float(s_hat)
    base = s_hat * p_poly(level, s / s_hat)
    moved = s_hat * (1 + rel_error) * p_poly(level, s / (s_hat * (1 + rel_error)))
    return float(np.linalg.norm(moved - base) / np.linalg.norm(base))


def convert_to_pc(weight: torch.Tensor, level: int, gamma: float = 1.0) -> PCForm:
    """PC form (V, gamma, s_hat, u, v) whose effective weight equals ``weight`` (to ~1e-12 in fp64).

    With W = U diag(w) Vh: s_hat = w_1 / gamma, V = s_hat U diag(x) Vh with x_1 = 1 (so s_hat is V's
    own spectral norm, which the layer's power iteration recovers) and x_i = p_k^{-1}(w_i / w_1) on the
    increasing branch [0, x_star]. Always possible: w_i / w_1 <= 1 <= p_max. The gap 1 vs <= x_star
    between V's top two singular values also makes its power iteration converge fast. u, v are the top
    singular vectors (the converged power-iteration state). The result is the canonical PC form (every
    other x_i satisfies p_k(x_i) < 1); a PC weight with some x_i in (x_one, 1], where p_k(x) >= 1, has the
    same function but is not what this returns.
    """
    _check_level(level)
    if weight.ndim != 2:
        raise InputError(None, f"convert_to_pc needs a 2-D matrix, got shape {tuple(weight.shape)}")
    if gamma <= 0:
        raise InputError(None, f"gamma must be positive, got {gamma}")
    w64 = weight.detach().to(torch.float64)
    uu, ss, vh = torch.linalg.svd(w64, full_matrices=False)
    top = float(ss[0])
    if top <= 0 or not math.isfinite(top):
        raise InputError(None, "cannot convert a zero or non-finite matrix to PC form")
    y = (ss / top).numpy()
    x = np.empty_like(y)
    at_top = y >= 1.0 - 1e-15
    x[at_top] = 1.0
    x[~at_top] = p_inverse(level, y[~at_top])
    s_hat = top / gamma
    v_mat = (uu * torch.from_numpy(s_hat * x)) @ vh
    return PCForm(
        weight=v_mat.to(weight.dtype),
        gamma=float(gamma),
        s_hat=s_hat,
        u=uu[:, 0].clone(),
        v=vh[0].clone(),
        level=level,
    )


@dataclass(frozen=True)
class MergeResult:
    """A plain state dict from a PC-layer one, with what was merged."""

    state_dict: dict[str, torch.Tensor]
    merged: tuple[str, ...]
    s_hat: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"merged": list(self.merged), "s_hat": dict(self.s_hat)}


def merge_pc_state_dict(
    state_dict: dict[str, torch.Tensor],
    level: int,
    *,
    weight_suffix: str = "weight",
    gamma_suffix: str = "gamma",
    u_suffix: str = "u",
    v_suffix: str = "v",
) -> MergeResult:
    """Merge every PC layer of a state dict into plain weights (see :func:`merge_pc`).

    A PC layer is a prefix P with tensors ``P.<gamma_suffix>``, ``P.<u_suffix>``, ``P.<v_suffix>`` and a 2-D
    ``P.<weight_suffix>``; the suffixes name the checkpoint's own parameter/buffer names. The gamma and
    power-iteration tensors are dropped from the result; all other entries are passed through unchanged.
    The input dict is not modified.
    """
    _check_level(level)
    out = dict(state_dict)
    merged, s_hats = [], {}
    tail = "." + gamma_suffix
    for key in sorted(state_dict):
        if not key.endswith(tail):
            continue
        prefix = key[: -len(tail)]
        names = {s: f"{prefix}.{s}" for s in (weight_suffix, u_suffix, v_suffix)}
        missing = [n for n in names.values() if n not in state_dict]
        if missing:
            raise InputError(None, f"PC layer {prefix!r} has {key} but lacks {', '.join(missing)}")
        w = state_dict[names[weight_suffix]]
        if w.ndim != 2:
            raise InputError(None, f"PC layer {prefix!r}: weight has shape {tuple(w.shape)}, expected 2-D")
        u, v = state_dict[names[u_suffix]], state_dict[names[v_suffix]]
        s_hats[prefix] = float(
            spectral_estimate(w.detach().to(torch.float64), u.detach().double(), v.detach().double())
        )
        out[names[weight_suffix]] = merge_pc(w, state_dict[key], u, v, level)
        for k in (key, names[u_suffix], names[v_suffix]):
            out.pop(k, None)
        merged.append(prefix)
    return MergeResult(out, tuple(merged), s_hats)
