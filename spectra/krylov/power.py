"""Power iteration, kept for comparison with PyHessian-style numbers (use :func:`hessian_spectra.krylov.lanczos.lanczos`).

Power iteration converges to the eigenvalue of largest *magnitude*. On an indefinite Hessian with
|lambda_min| close to lambda_max it converges very slowly, and when |lambda_min| > lambda_max it returns
lambda_min; PyHessian reports that number as "the top eigenvalue" (measured: -38% at init).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from hessian_spectra.errors import ConvergenceWarning
from hessian_spectra.io import json_safe
from hessian_spectra.krylov.lanczos import random_unit_vector
from hessian_spectra.krylov.linop import LinearOperator


@dataclass(frozen=True)
class PowerResult:
    """Signed Rayleigh quotient of the last iterate and its residual ||A v - rq v|| (||v|| = 1)."""

    eigenvalue: float
    residual: float
    converged: bool
    iterations: int
    num_matvecs: int
    tol: float
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return json_safe({"method": "power_iteration", **self.__dict__})


def power_iteration(
    op: LinearOperator, *, max_iter: int = 100, tol: float = 1e-6, seed: int = 0
) -> PowerResult:
    """The eigenvalue of largest |lambda| of a symmetric ``op`` (NOT lambda_max on indefinite operators).

    Stops when ||A v - rq v|| <= tol * |rq|; the residual bounds the distance from ``rq`` to some
    eigenvalue. Warns with :class:`ConvergenceWarning` when ``max_iter`` runs out first (typical when
    |lambda_min| ~ lambda_max: the iterate oscillates between the two eigenvectors).
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    v = random_unit_vector(int(op.dim), torch.Generator().manual_seed(int(seed))).to(op.device)
    rq, residual, converged, it = float("nan"), float("inf"), False, 0
    for it in range(1, max_iter + 1):  # noqa: B007 - `it` is reported
        w = op.matvec(v.to(op.dtype)).detach().reshape(-1).to(torch.float64)
        rq = float(torch.dot(v, w))
        residual = float(torch.linalg.vector_norm(w - rq * v))
        if not math.isfinite(residual):
            raise FloatingPointError("the operator returned a non-finite vector")
        if residual <= tol * abs(rq):
            converged = True
            break
        norm = float(torch.linalg.vector_norm(w))
        if norm == 0.0:  # v lies in the null space: 0 is an eigenvalue, exactly
            converged, residual = True, 0.0
            break
        v = w / norm
    if not converged:
        warnings.warn(
            f"power iteration did not converge in {max_iter} matvecs (residual {residual:.2e}, "
            f"Rayleigh quotient {rq:.6g}); it targets the largest |lambda| - use hessian_spectra.krylov.lanczos.lanczos",
            ConvergenceWarning,
            stacklevel=2,
        )
    return PowerResult(rq, residual, converged, it, it, float(tol), int(seed))
