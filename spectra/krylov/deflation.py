"""Krylov deflation of the SLQ trace: the first probe's Lanczos basis as a Hutch++-style sketch, free.

With Q (n x k) the first probe's orthonormal Krylov basis, tr(A) = tr(Q^T A Q) + tr(P A P), P = I - Q Q^T.
tr(Q^T A Q) = tr(T_1) is known exactly once Q is; each later probe v_j (z_j = sqrt(n) v_j, E[z z^T] = I)
gives the unbiased residual sample z_j^T P A P z_j = z_j^T A z_j - c^T T_1 c - 2 c_k beta_k q_{k+1}^T z_j with
c = Q^T z_j, because A Q = Q T_1 + beta_k q_{k+1} e_k^T: no matvec beyond those SLQ already does. The later
probes are redrawn from a copy of the seeded generator while Q is still in memory, so peak memory does
not grow. Derivation and measurements: spectra/docs/uncertainty.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hessian_spectra.io import json_safe
from hessian_spectra.krylov.chain import _Chain

__all__ = ["Deflation", "deflate"]


@dataclass(frozen=True, eq=False)
class Deflation:
    """What the first probe's Krylov space Q contributes to the trace of the other probes.

    ``top`` = tr(T_1) (exact given Q); ``corrections[j]`` = c^T T_1 c + 2 c_k beta_k q_{k+1}^T z for probe
    j + 1, so its residual sample is its own z^T A z minus this; ``curvature[j]`` = c^T T_1^2 c (only when
    Q is invariant, beta_k = 0: then ||A P z||^2 = ||A z||^2 - c^T T_1^2 c is known too); ``rank`` = k;
    ``full``: Q spans the whole space, so ``top`` is the exact trace.
    """

    top: float
    corrections: np.ndarray
    curvature: np.ndarray | None
    rank: int
    invariant: bool
    full: bool

    def residuals(self, trace_samples: np.ndarray) -> np.ndarray:
        """Residual samples z^T P A P z of probes 2.. from their plain samples z^T A z."""
        return np.asarray(trace_samples[1:], dtype=np.float64) - self.corrections

    def residual_moments(self, second_moments: np.ndarray | None) -> np.ndarray | None:
        """||A P z||^2 of probes 2.. (>= ||P A P z||^2, whose mean is ||P A P||_F^2), when Q is invariant."""
        if self.curvature is None or second_moments is None:
            return None
        return np.maximum(np.asarray(second_moments[1:], dtype=np.float64) - self.curvature, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return json_safe({"top": self.top, "rank": self.rank, "invariant": self.invariant, "full": self.full})


def _tridiagonal_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    t = np.diag(a)
    if b.size:
        t += np.diag(b, 1) + np.diag(b, -1)
    return t


def deflate(chain: _Chain, dim: int, count: int, next_probe: Callable[[], torch.Tensor]) -> Deflation | None:
    """The deflation terms of ``count`` later probes (``next_probe()`` redraws each normalised start
    vector in order) against a finished ``chain`` that still holds its basis; None without a basis."""
    if chain._ring or chain.steps == 0:
        return None
    a, b = chain.tridiagonal()
    t = _tridiagonal_matrix(a, b)
    k = int(a.size)
    full = k >= dim
    invariant = full or chain.exhausted
    t2 = t @ t if invariant else None
    scale = math.sqrt(dim)
    corr = np.empty(count)
    curv = np.empty(count) if invariant else None
    for j in range(count):
        c, d = chain.coefficients(next_probe() * scale)
        corr[j] = float(c @ t @ c) + 2.0 * float(c[-1]) * d
        if curv is not None:
            curv[j] = float(c @ t2 @ c)
    return Deflation(float(a.sum()), corr, curv, k, bool(invariant), bool(full))
