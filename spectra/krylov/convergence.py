"""When a Lanczos chain may stop: Ritz values and residuals of T_m, and multiplicity checks after restarts.

Belongs here: the tridiagonal eigensolve and the stopping rule (each Ritz value is within its
residual |beta_m s_{m,i}| of a true eigenvalue), kept apart from the recurrence that feeds them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg
import torch
from hessian_spectra.krylov.chain import _Chain


def _eig_tridiagonal(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric tridiagonal (alphas, betas)."""
    if alphas.size == 1:
        return alphas.copy(), np.ones((1, 1))
    try:
        return scipy.linalg.eigh_tridiagonal(alphas, betas)
    except (np.linalg.LinAlgError, ValueError):  # pragma: no cover - LAPACK fallback
        t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        return np.linalg.eigh(t)


def _check(chain: _Chain, k: int, which: str, tol: float) -> tuple[bool, dict[str, Any]]:
    """Ritz values/residuals of the chain and whether the requested extremes have converged."""
    a, b = chain.tridiagonal()
    theta, s = _eig_tridiagonal(a, b)
    m = theta.size
    scale = float(np.max(np.abs(theta))) if m else 0.0
    floor = max(chain.dropped, float(torch.finfo(chain.op_dtype).eps) * scale)
    res = np.maximum(np.abs(chain.residual_beta * s[-1, :]), floor)
    kk = min(k, m)
    top_idx = np.arange(m - 1, m - 1 - kk, -1)
    bot_idx = np.arange(kk)
    limit = tol * scale
    enough = m >= min(k, chain.dim)
    top_ok = bool(np.all(res[top_idx] <= limit)) if which in ("both", "largest") else True
    bot_ok = bool(np.all(res[bot_idx] <= limit)) if which in ("both", "smallest") else True
    info = {"theta": theta, "s": s, "res": res, "top_idx": top_idx, "bot_idx": bot_idx}
    return bool(enough and top_ok and bot_ok), info


def _changes_extremes(a: np.ndarray, b: np.ndarray, s0: int, s1: int, k: int, which: str, tol: float) -> bool:
    """Whether the closed Krylov block T[s0:s1] moved the requested extremes of the blocks before it.

    A block started from a random vector orthogonal to earlier invariant blocks holds every distinct
    eigenvalue left in the complement; if it changed the top/bottom k, further copies may remain there.
    """
    blk = _eig_tridiagonal(a[s0:s1], b[s0 : s1 - 1])[0]
    prior = _eig_tridiagonal(a[:s0], b[: s0 - 1])[0] if s0 > 0 else np.array([])
    if prior.size < k:
        return True
    slack = tol * max(float(np.max(np.abs(prior))), float(np.max(np.abs(blk))))
    if which in ("both", "largest") and blk[-1] > prior[-k] + slack:
        return True
    return bool(which in ("both", "smallest") and blk[0] < prior[k - 1] - slack)


class _Tracker:
    """Stopping logic for one chain: Ritz residuals, plus multiplicity checks after breakdowns."""

    def __init__(self, chain: _Chain, k: int, which: str, tol: float):
        self.chain, self.k, self.which, self.tol = chain, k, which, tol
        self.pending = False  # a restart found copies: the next block must close before we stop
        self.blocks = 1
        self.converged = False
        self.info: dict[str, Any] | None = None

    def update(self) -> bool:
        """Call after each push; True when the chain should stop."""
        c = self.chain
        if len(c.starts) > self.blocks:
            self.blocks = len(c.starts)
            a, b = c.tridiagonal()
            self.pending = _changes_extremes(a, b, c.starts[-2], c.starts[-1], self.k, self.which, self.tol)
        if c.steps < min(self.k, c.dim) and not c.done:
            return False
        self.converged, self.info = _check(c, self.k, self.which, self.tol)
        if self.pending and not (c.exhausted and c.steps >= c.dim):
            self.converged = False
        return self.converged or c.done

    def final(self) -> tuple[bool, dict[str, Any]]:
        if self.info is None:
            self.converged, self.info = _check(self.chain, self.k, self.which, self.tol)
        return self.converged, self.info
