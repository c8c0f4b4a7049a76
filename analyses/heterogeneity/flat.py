"""Flat blocks: diagonal Hessian blocks that are zero up to rounding, found relative to the model's
curvature scale with a tolerance tied to the dtype the Hessian was computed in, and listed with the
likely reason. They are a finding of their own and are left out of every spread, JS matrix and driver:
a block with no curvature has no scale (its log is -inf) and its density is a spike of rounding noise.
Design notes: spectra/docs/heterogeneity.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from hessian_spectra.analyses.heterogeneity.blocks import BlockSpectrum

__all__ = ["FLAT_TOL_EPS", "FlatBlock", "model_curvature_scale", "flat_tolerance", "find_flat", "flat_reason"]

#: A block is flat when its spectral radius is <= FLAT_TOL_EPS x eps(dtype) x the model's curvature scale:
#: below the unit roundoff of the dtype relative to the largest block, no curvature can be told from
#: rounding in the worst case. Measured rounding floors of blocks that are zero by construction (issue 11
#: suite, float32): key biases 1e-14..7e-13 of the scale, a Mixer token bias under LayerNorm 2e-9 (0.02
#: eps), 50x below the tolerance. Real blocks below it are reported flat too (with that reason): at init
#: the suite's BERT query biases sit at 3e-8 of the scale (0.25 eps) in float32.
FLAT_TOL_EPS = 1.0
_EPS = {"float64": 2.0**-52, "float32": 2.0**-23, "bfloat16": 2.0**-7, "float16": 2.0**-10}


@dataclass(frozen=True)
class FlatBlock:
    """One flat block: its size, spectral radius (absolute and relative to the model's scale) and why."""

    name: str
    dim: int
    spectral_radius: float
    relative: float
    exactly_zero: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_curvature_scale(spectra: Sequence[BlockSpectrum]) -> float:
    """The model's curvature scale: the largest block spectral radius max_b max|lambda(H_bb)| (a lower
    bound on the full Hessian's spectral radius, by interlacing). 0 when every block is zero."""
    return max((s.spectral_radius for s in spectra), default=0.0)


def flat_tolerance(dtype: str | None) -> float:
    """The relative flatness tolerance for a Hessian computed in ``dtype`` (None: float32)."""
    name = str(dtype or "float32").replace("torch.", "")
    return FLAT_TOL_EPS * _EPS.get(name, _EPS["float32"])


def flat_reason(block: BlockSpectrum, exactly_zero: bool) -> str:
    """The likely reason a block is flat, from its name and whether every eigenvalue is exactly 0."""
    from hessian_spectra.weights.roles import tensor_role

    name = block.name.lower()
    base = block.name.split("[")[0].split(":")[0].strip()
    parts = base.lower().split(".")
    leaf = parts[-2] if len(parts) >= 2 else ""
    if parts[-1] == "bias" and (leaf in ("k_proj", "key", "k", "wk", "k_lin", "to_k", "key_proj")):
        return (
            "key bias: it adds the same number to every attention logit of a softmax row, which softmax "
            "ignores, so the loss does not depend on it (zero curvature by construction)"
        )
    role = tensor_role(base)
    if (
        exactly_zero
        and role in ("embedding", "position_embedding", "lm_head")
        and ("[row" in name or "[token" in name)
    ):
        return "embedding rows of tokens (or positions) absent from these batches: exactly zero curvature"
    if exactly_zero:
        return (
            "exactly zero: the loss does not depend on this block on these batches (a pooler, head or "
            "classifier the loss does not use, or embedding rows of absent tokens)"
        )
    return (
        "zero up to rounding: no curvature this precision can tell from rounding noise (e.g. a bias whose "
        "effect a following normalisation removes)"
    )


def find_flat(
    spectra: Sequence[BlockSpectrum], dtype: str | None = None, *, tol: float | None = None
) -> tuple[list[FlatBlock], float, float]:
    """``(flat blocks, model curvature scale S, relative tolerance)``: a block is flat when its spectral
    radius is <= tol x S (default tol: :func:`flat_tolerance` of ``dtype``). With S = 0 every block is flat."""
    scale = model_curvature_scale(spectra)
    rel = flat_tolerance(dtype) if tol is None else float(tol)
    out = []
    for s in spectra:
        rho = s.spectral_radius
        if rho <= rel * scale or scale == 0.0:
            zero = bool(np.all(s.nodes[s.weights > 0] == 0.0))
            out.append(
                FlatBlock(s.name, s.dim, rho, rho / scale if scale > 0 else 0.0, zero, flat_reason(s, zero))
            )
    return out, scale, rel
