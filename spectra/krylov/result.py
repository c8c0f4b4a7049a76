"""What a Lanczos run returns: ``LanczosResult``, and how a finished chain becomes one (Ritz vectors,
the unconverged warning). Kept apart so callers can use the record without the algorithm."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from hessian_spectra.errors import ConvergenceWarning
from hessian_spectra.io import json_safe
from hessian_spectra.krylov.chain import _Chain

# Rows of a low-precision basis upcast to float64 at once when forming Ritz vectors (memory cap).
_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True, eq=False)
class LanczosResult:
    """Extreme Ritz values of a symmetric operator with their residual bounds.

    ``top`` is descending, ``bottom`` ascending; ``top_residuals[i]`` bounds |top[i] - lambda| for
    some true eigenvalue lambda (up to O(eps ||A||); with ``reorthogonalize="partial"`` the basis is
    semi-orthogonal, which keeps this true, see spectra/docs/lanczos.md). ``converged`` says whether every
    requested value met ``residual <= tol * max|theta|``. Sides not requested (``which``) are empty.
    ``num_reorth`` counts the steps that reorthogonalised against the whole basis (``steps`` when full).
    """

    top: tuple[float, ...]
    bottom: tuple[float, ...]
    top_residuals: tuple[float, ...]
    bottom_residuals: tuple[float, ...]
    converged: bool
    steps: int
    num_matvecs: int
    alphas: tuple[float, ...]
    betas: tuple[float, ...]
    ritz_values: tuple[float, ...]
    tol: float
    k: int
    which: str
    seed: int
    dim: int
    exhausted: bool = False
    reorthogonalize: str = "full"
    num_reorth: int = 0
    top_vectors: torch.Tensor | None = field(default=None, repr=False)
    bottom_vectors: torch.Tensor | None = field(default=None, repr=False)

    @property
    def lambda_max(self) -> float | None:
        """Largest Ritz value (None when ``which="smallest"``)."""
        return self.top[0] if self.top else None

    @property
    def lambda_min(self) -> float | None:
        """Smallest Ritz value (None when ``which="largest"``)."""
        return self.bottom[0] if self.bottom else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (vectors left out)."""
        return json_safe(
            {
                "method": "lanczos",
                "k": self.k,
                "which": self.which,
                "dim": self.dim,
                "seed": self.seed,
                "lambda_max": self.lambda_max,
                "lambda_min": self.lambda_min,
                "top": list(self.top),
                "bottom": list(self.bottom),
                "top_residuals": list(self.top_residuals),
                "bottom_residuals": list(self.bottom_residuals),
                "converged": self.converged,
                "exhausted": self.exhausted,
                "tol": self.tol,
                "steps": self.steps,
                "num_matvecs": self.num_matvecs,
                "reorthogonalize": self.reorthogonalize,
                "num_reorth": self.num_reorth,
                "alphas": list(self.alphas),
                "betas": list(self.betas),
                "ritz_values": list(self.ritz_values),
            }
        )


def _ritz_vectors(chain: _Chain, s_cols: np.ndarray) -> torch.Tensor:
    """Ritz vectors Q^T s for the given eigenvector columns of T (rows of the result)."""
    blocks = chain._blocks(chain.steps)
    device = blocks[0].device
    coef = torch.from_numpy(np.ascontiguousarray(s_cols.T)).to(device=device)
    out = torch.zeros(coef.shape[0], chain.dim, dtype=torch.float64, device=device)
    step = max(1, _CHUNK_ELEMENTS // max(chain.dim, 1))
    start = 0
    for blk in blocks:
        for r0 in range(0, blk.shape[0], step):
            rows = blk[r0 : r0 + step]
            out += coef[:, start + r0 : start + r0 + rows.shape[0]] @ rows.to(torch.float64)
        start += blk.shape[0]
    return out.to(chain.store_dtype)


def _finish(
    chain: _Chain,
    k: int,
    which: str,
    tol: float,
    seed: int,
    converged: bool,
    info: dict[str, Any],
    return_vectors: bool,
    warn: bool = True,
    name: str = "",
) -> LanczosResult:
    theta, res = info["theta"], info["res"]
    want_top = which in ("both", "largest")
    want_bot = which in ("both", "smallest")
    top_idx = info["top_idx"] if want_top else np.array([], dtype=int)
    bot_idx = info["bot_idx"] if want_bot else np.array([], dtype=int)
    top_vecs = bot_vecs = None
    if return_vectors:
        top_vecs = _ritz_vectors(chain, info["s"][:, top_idx]) if want_top else None
        bot_vecs = _ritz_vectors(chain, info["s"][:, bot_idx]) if want_bot else None
    if warn and not converged:
        worst = float(np.max(res[np.concatenate([top_idx, bot_idx])])) if theta.size else float("nan")
        scale = float(np.max(np.abs(theta))) if theta.size else float("nan")
        where = f" for {name}" if name else ""
        warnings.warn(
            f"Lanczos{where} stopped after {chain.steps} steps without meeting tol={tol:g}: worst "
            f"relative Ritz residual {worst / scale if scale else float('nan'):.2e}; raise max_steps",
            ConvergenceWarning,
            stacklevel=3,
        )
    return LanczosResult(
        top=tuple(float(x) for x in theta[top_idx]),
        bottom=tuple(float(x) for x in theta[bot_idx]),
        top_residuals=tuple(float(x) for x in res[top_idx]),
        bottom_residuals=tuple(float(x) for x in res[bot_idx]),
        converged=converged,
        steps=chain.steps,
        num_matvecs=chain.steps,
        alphas=tuple(chain.alphas),
        betas=tuple(chain.betas),
        ritz_values=tuple(float(x) for x in theta),
        tol=tol,
        k=k,
        which=which,
        seed=seed,
        dim=chain.dim,
        exhausted=chain.exhausted,
        reorthogonalize=chain.policy,
        num_reorth=chain.num_reorth,
        top_vectors=top_vecs,
        bottom_vectors=bot_vecs,
    )


__all__: Sequence[str] = ["LanczosResult"]
