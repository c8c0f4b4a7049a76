"""Jensen-Shannon distances (square root of the divergence, log base 2) between block densities, and the
mean over block pairs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["js_distance", "js_matrix", "mean_offdiagonal"]


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (square root of the divergence, log base 2) between probability vectors."""
    return float(
        js_matrix(np.stack([np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)]))[0, 1]
    )


def js_matrix(densities: np.ndarray) -> np.ndarray:
    """Symmetric matrix of pairwise JS distances between the rows of ``densities`` (as :func:`js_distance`,
    one row against all later rows at a time)."""
    from scipy.special import rel_entr

    p = np.asarray(densities, dtype=np.float64)
    p = p / p.sum(1, keepdims=True)
    n = p.shape[0]
    out = np.zeros((n, n))
    rows = max(1, 2_000_000 // max(1, p.shape[1]))
    for i in range(n - 1):
        for j in range(i + 1, n, rows):
            q = p[j : j + rows]
            m = 0.5 * (p[i] + q)
            kl = np.where(m > 0, rel_entr(p[i], m) + rel_entr(q, m), 0.0)  # m underflows only where p, q ~ 0
            div = 0.5 * kl.sum(1) / math.log(2.0)
            out[i, j : j + rows] = out[j : j + rows, i] = np.sqrt(np.maximum(div, 0.0))
    return out


def mean_offdiagonal(matrix: np.ndarray, index: Sequence[int] | None = None) -> float | None:
    """Mean over pairs i < j (restricted to ``index`` when given); None with fewer than two blocks."""
    m = np.asarray(matrix)
    if index is not None:
        idx = np.asarray(index, dtype=int)
        m = m[np.ix_(idx, idx)]
    n = m.shape[0]
    if n < 2:
        return None
    iu = np.triu_indices(n, 1)
    return float(m[iu].mean())
