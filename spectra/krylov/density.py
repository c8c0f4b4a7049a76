"""Smoothed spectral densities: Gaussian-kernel mixtures of quadrature nodes or of known eigenvalues on a grid,
the default kernel width for an m-step SLQ, and the L1 distance between two densities."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from hessian_spectra.io import json_safe

__all__ = [
    "DEFAULT_SIGMA_FRACTION",
    "GRID_MARGIN_SIGMAS",
    "SpectralDensity",
    "default_sigma_fraction",
    "density_l1",
    "exact_density",
    "kernel_mixture",
]

#: Default kernel width: this fraction of the range of the Ritz values seen (the spread of the nodes), or
#: half the mean node spacing of an m-node quadrature, 1/(2m) of the range, when that is wider: a narrower
#: kernel draws the quadrature nodes, not the spectrum (measured on the tiny-MLP Hessian, 10 probes,
#: median L1 to the exact density over 10 seeds: m = 30 gives 0.085 at 1% and 0.040 at 1.5%; m = 20 gives
#: 0.28 at 1%, 0.037 at 2%).
DEFAULT_SIGMA_FRACTION = 0.01


def default_sigma_fraction(steps: int) -> float:
    """The default kernel width of an SLQ density with ``steps`` Lanczos steps, as a fraction of the range."""
    return max(DEFAULT_SIGMA_FRACTION, 1.0 / (2.0 * max(int(steps), 1)))


#: Default grid: ``num_points`` points spanning the nodes plus this many sigmas on each side.
GRID_MARGIN_SIGMAS = 6.0

Kind = Literal["gaussian"]


@dataclass(frozen=True, eq=False)
class SpectralDensity:
    """A smoothed spectral density on a grid: ``values`` integrate to ~1 (exactly 1 on the real line;
    the default grid loses < 1e-8 of the mass); ``counts`` = values * dim (eigenvalues per unit)."""

    grid: np.ndarray
    values: np.ndarray
    sigma: float
    kind: str
    dim: int | None = None

    @property
    def counts(self) -> np.ndarray:
        if self.dim is None:
            raise ValueError("counts need the operator dimension (dim is None)")
        return self.values * self.dim

    def integral(self) -> float:
        """Trapezoid integral of ``values`` over ``grid``."""
        return float(np.trapezoid(self.values, self.grid))

    def to_dict(self) -> dict[str, Any]:
        return json_safe(
            {
                "kind": self.kind,
                "sigma": self.sigma,
                "dim": self.dim,
                "grid": self.grid,
                "values": self.values,
            }
        )


def kernel_mixture(
    grid: np.ndarray, nodes: np.ndarray, weights: np.ndarray, sigma: float, kind: str
) -> np.ndarray:
    """sum_j weights_j g_sigma(grid - nodes_j), evaluated in chunks of the grid."""
    if kind != "gaussian":
        raise ValueError(f"kind must be 'gaussian', got {kind!r}")
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a positive finite number, got {sigma}")
    nodes = np.asarray(nodes, dtype=np.float64).ravel()
    weights = np.asarray(weights, dtype=np.float64).ravel()
    keep = weights != 0
    nodes, weights = nodes[keep], weights[keep]
    out = np.zeros(grid.shape, dtype=np.float64)
    step = max(1, (1 << 22) // max(nodes.size, 1))
    norm = 1.0 / (sigma * math.sqrt(2.0 * math.pi))
    for start in range(0, grid.size, step):
        g = grid[start : start + step, None]
        out[start : start + step] = (np.exp(-0.5 * ((g - nodes[None, :]) / sigma) ** 2) @ weights) * norm
    return out


def exact_density(
    eigenvalues: np.ndarray | Sequence[float] | torch.Tensor,
    grid: np.ndarray | Sequence[float],
    sigma: float,
    kind: Kind = "gaussian",
) -> SpectralDensity:
    """The density (1/n) sum_j g_sigma(t - lambda_j) of known eigenvalues, with SLQ's kernel."""
    if isinstance(eigenvalues, torch.Tensor):
        eigenvalues = eigenvalues.detach().cpu().to(torch.float64).numpy()
    lam = np.asarray(eigenvalues, dtype=np.float64).ravel()
    grid = np.asarray(grid, dtype=np.float64)
    w = np.full(lam.size, 1.0 / lam.size)
    return SpectralDensity(
        grid, kernel_mixture(grid, lam, w, float(sigma), kind), float(sigma), kind, lam.size
    )


def density_l1(a: SpectralDensity, b: SpectralDensity) -> float:
    """Integral of |p - q| (trapezoid) for two densities on the same grid; 0 = equal, 2 = disjoint."""
    if a.grid.shape != b.grid.shape or not np.allclose(a.grid, b.grid, rtol=0, atol=0):
        raise ValueError("density_l1 needs both densities on the same grid")
    return float(np.trapezoid(np.abs(a.values - b.values), a.grid))
