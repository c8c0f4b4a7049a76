"""Exact spectra of small symmetric operators: the dense matrix from its columns, ``eigvalsh`` in float64.

Where an operator of dimension n is at most the SLQ budget (probes x steps matvecs), its n columns give
the whole spectrum for fewer matvecs than the estimate would take. :class:`ExactSpectrum` answers the
questions an :class:`~hessian_spectra.krylov.slq.SLQResult` (nodes, weights, trace, density) and a
:class:`~hessian_spectra.krylov.result.LanczosResult` (top/bottom, lambda_max) answer, so a report can hold
either; ``method`` says which it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hessian_spectra.io import json_safe
from hessian_spectra.krylov.density import GRID_MARGIN_SIGMAS, SpectralDensity, kernel_mixture
from hessian_spectra.krylov.linop import LinearOperator

__all__ = ["ExactSpectrum", "dense_matrix", "dense_spectrum", "symmetric_eigvalsh"]


def symmetric_eigvalsh(matrix: torch.Tensor | np.ndarray) -> tuple[np.ndarray, float]:
    """Eigenvalues (ascending, float64) of the symmetric part of ``matrix`` and its relative asymmetry
    ``||A - A^T||_F / ||A||_F`` (rounding in the columns; 0 for an exactly symmetric input)."""
    a = torch.as_tensor(matrix).detach().to("cpu", torch.float64)
    norm = float(torch.linalg.matrix_norm(a))
    asym = float(torch.linalg.matrix_norm(a - a.T)) / norm if norm > 0 else 0.0
    ev = torch.linalg.eigvalsh(0.5 * (a + a.T)).numpy()
    return ev, asym


def dense_matrix(op: LinearOperator, chunk: int = 64) -> torch.Tensor:
    """The operator's dense matrix from its columns (``op.matmat`` on identity chunks when it has one,
    else one ``matvec`` per column)."""
    n = int(op.dim)
    out = torch.empty(n, n, dtype=op.dtype, device=op.device)
    matmat = getattr(op, "matmat", None)
    for c0 in range(0, n, chunk):
        c1 = min(n, c0 + chunk)
        eye = torch.zeros(n, c1 - c0, dtype=op.dtype, device=op.device)
        eye[torch.arange(c0, c1), torch.arange(c1 - c0)] = 1.0
        if matmat is not None:
            out[:, c0:c1] = matmat(eye)
        else:
            for j in range(c1 - c0):
                out[:, c0 + j] = op.matvec(eye[:, j])
    return out


def dense_spectrum(op: LinearOperator, *, name: str | None = None, top_k: int = 5) -> ExactSpectrum:
    """Exact spectrum of ``op`` from its ``dim`` columns (see :func:`dense_matrix`)."""
    before = int(op.num_matvecs)
    ev, asym = symmetric_eigvalsh(dense_matrix(op))
    return ExactSpectrum.from_eigenvalues(
        ev, name=name, top_k=top_k, num_matvecs=int(op.num_matvecs) - before, asymmetry=asym
    )


@dataclass(frozen=True, eq=False)
class ExactSpectrum:
    """Every eigenvalue of a symmetric operator (ascending), with the SLQ- and Lanczos-style views.

    As a quadrature: one "probe" whose nodes are the eigenvalues, each with weight 1/dim (so densities
    and ``trace`` follow the SLQ formulas exactly, with ``trace_stderr`` 0). As extremes: ``top`` (the
    ``top_k`` largest, descending) and ``bottom`` (ascending), ``converged`` True. ``asymmetry`` is the
    relative asymmetry of the computed matrix (rounding; the spectrum is that of its symmetric part).
    """

    eigenvalues: np.ndarray
    dim: int
    num_matvecs: int
    name: str | None = None
    top_k: int = 5
    asymmetry: float = 0.0
    method: str = "exact"

    @classmethod
    def from_eigenvalues(
        cls, eigenvalues: Any, *, name: str | None = None, top_k: int = 5, num_matvecs: int = 0,
        asymmetry: float = 0.0,
    ) -> ExactSpectrum:  # fmt: skip
        ev = np.sort(np.asarray(eigenvalues, dtype=np.float64).ravel())
        if ev.size == 0 or not np.all(np.isfinite(ev)):
            raise ValueError(f"exact spectrum {name!r}: eigenvalues must be finite and non-empty")
        return cls(ev, int(ev.size), int(num_matvecs), name, int(top_k), float(asymmetry))

    # ------------------------------------------------------------------ the SLQResult view
    @property
    def nodes(self) -> np.ndarray:
        """``(1, dim)``: the eigenvalues as the nodes of one exact quadrature."""
        return self.eigenvalues[None, :]

    @property
    def weights(self) -> np.ndarray:
        return np.full((1, self.dim), 1.0 / self.dim)

    @property
    def num_probes(self) -> int:
        return 1

    @property
    def steps(self) -> int:
        return self.dim

    @property
    def steps_taken(self) -> tuple[int, ...]:
        return (self.dim,)

    @property
    def trace(self) -> float:
        return float(self.eigenvalues.sum())

    @property
    def trace_stderr(self) -> float:
        return 0.0

    @property
    def ritz_max(self) -> float:
        return float(self.eigenvalues[-1])

    @property
    def ritz_min(self) -> float:
        return float(self.eigenvalues[0])

    # what the interval functions of hessian_spectra.krylov.slq_stats read: every answer exact, zero width
    exact = True
    deflation = None

    def exact_eigenvalues(self) -> np.ndarray:
        """Every eigenvalue (a copy), as :meth:`SLQResult.exact_eigenvalues` gives them when known."""
        return self.eigenvalues.copy()

    def density_sigma(self) -> float:
        """The default kernel width of :meth:`density`: 1% of the eigenvalue range."""
        span = self.ritz_max - self.ritz_min
        return 0.01 * (span if span > 0 else max(abs(self.ritz_max), 1e-12))

    def density(
        self, grid: np.ndarray | Sequence[float] | None = None, *, sigma: float | None = None,
        num_points: int = 1000, kind: str = "gaussian",
    ) -> SpectralDensity:  # fmt: skip
        """Gaussian-smoothed density of the eigenvalues; ``sigma`` defaults to :meth:`density_sigma`."""
        sigma = self.density_sigma() if sigma is None else float(sigma)
        if grid is None:
            pad = GRID_MARGIN_SIGMAS * sigma
            grid = np.linspace(self.ritz_min - pad, self.ritz_max + pad, int(num_points))
        grid = np.asarray(grid, dtype=np.float64)
        values = kernel_mixture(grid, self.eigenvalues, self.weights[0], sigma, kind)
        return SpectralDensity(grid, values, sigma, kind, self.dim)

    # ------------------------------------------------------------------ the LanczosResult view
    @property
    def top(self) -> tuple[float, ...]:
        return tuple(float(x) for x in self.eigenvalues[::-1][: self.top_k])

    @property
    def bottom(self) -> tuple[float, ...]:
        return tuple(float(x) for x in self.eigenvalues[: self.top_k])

    @property
    def lambda_max(self) -> float:
        return self.ritz_max

    @property
    def lambda_min(self) -> float:
        return self.ritz_min

    @property
    def converged(self) -> bool:
        return True

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: both views' keys (``top``/``bottom``/``converged`` and ``trace``/``nodes``/``weights``)
        plus the eigenvalues; ``method`` is ``"exact"``."""
        return json_safe(
            {
                "method": self.method, "name": self.name, "dim": self.dim, "num_matvecs": self.num_matvecs,
                "lambda_max": self.lambda_max, "lambda_min": self.lambda_min, "top": list(self.top),
                "bottom": list(self.bottom), "top_residuals": [0.0] * len(self.top),
                "bottom_residuals": [0.0] * len(self.bottom), "converged": True, "steps": self.dim,
                "num_probes": 1, "trace": self.trace, "trace_stderr": 0.0, "ritz_min": self.ritz_min,
                "ritz_max": self.ritz_max, "asymmetry": self.asymmetry, "eigenvalues": self.eigenvalues,
                "nodes": self.nodes, "weights": self.weights,
            }
        )  # fmt: skip
