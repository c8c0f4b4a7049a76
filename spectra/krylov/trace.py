"""Stochastic trace estimators with standard errors: Hutchinson and Hutch++ (Meyer et al., 2021).

Probes are drawn in float64 on the CPU from a seeded generator, cast to the operator dtype/device for the
matvec; every dot product and the QR of Hutch++ are float64. An operator with a ``matmat(V)`` method
taking and returning ``(dim, n)`` tensors is used batched; otherwise probes go through ``matvec``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from hessian_spectra.io import json_safe
from hessian_spectra.krylov.linop import LinearOperator

Probe = Literal["rademacher", "gaussian"]


@dataclass(frozen=True)
class TraceEstimate:
    """A trace estimate with the standard error of its stochastic part (None/NaN when not estimable)."""

    value: float
    stderr: float
    num_matvecs: int
    method: str
    num_probes: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return json_safe(dict(self.__dict__))


def draw_probes(dim: int, n: int, generator: torch.Generator, probe: str = "rademacher") -> torch.Tensor:
    """``(dim, n)`` float64 CPU probes with E[z z^T] = I (Rademacher signs or standard Gaussians)."""
    if probe == "rademacher":
        return torch.randint(0, 2, (dim, n), generator=generator, dtype=torch.float64).mul_(2).sub_(1)
    if probe == "gaussian":
        return torch.randn(dim, n, generator=generator, dtype=torch.float64)
    raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {probe!r}")


def apply(op: LinearOperator, vectors: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """A @ V for float64 ``V`` of shape (dim, n), returned in float64 on V's device.

    Uses ``op.matmat`` in chunks of ``batch_size`` columns when the operator has one, else ``matvec``.
    """
    dev = vectors.device
    out = torch.empty_like(vectors)
    matmat = getattr(op, "matmat", None)
    n = vectors.shape[1]
    if callable(matmat):
        for start in range(0, n, batch_size):
            chunk = vectors[:, start : start + batch_size].to(device=op.device, dtype=op.dtype)
            res = matmat(chunk)
            if tuple(res.shape) != tuple(chunk.shape):
                raise ValueError(
                    f"op.matmat returned shape {tuple(res.shape)} for input {tuple(chunk.shape)}"
                )
            out[:, start : start + batch_size] = res.detach().to(device=dev, dtype=torch.float64)
    else:
        for j in range(n):
            v = vectors[:, j].to(device=op.device, dtype=op.dtype)
            out[:, j] = op.matvec(v).detach().reshape(-1).to(device=dev, dtype=torch.float64)
    if not bool(torch.isfinite(out).all()):
        raise FloatingPointError("the operator returned a non-finite vector")
    return out


def _mean_stderr(samples: torch.Tensor) -> tuple[float, float]:
    x = samples.detach().cpu().numpy().astype(np.float64)
    mean = float(x.mean())
    stderr = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else float("nan")
    return mean, stderr


def hutchinson(
    op: LinearOperator,
    *,
    num_probes: int = 50,
    seed: int = 0,
    probe: Probe = "rademacher",
    batch_size: int = 16,
) -> TraceEstimate:
    """Hutchinson's estimate mean_i z_i^T A z_i over ``num_probes`` probes, with its standard error
    std(z^T A z) / sqrt(num_probes)."""
    if num_probes < 1:
        raise ValueError(f"num_probes must be >= 1, got {num_probes}")
    gen = torch.Generator().manual_seed(int(seed))
    z = draw_probes(int(op.dim), int(num_probes), gen, probe)
    az = apply(op, z, batch_size)
    mean, stderr = _mean_stderr((z * az).sum(dim=0))
    return TraceEstimate(mean, stderr, int(num_probes), f"hutchinson-{probe}", int(num_probes), int(seed))


def hutchpp(
    op: LinearOperator, *, num_matvecs: int = 60, seed: int = 0, batch_size: int = 16
) -> TraceEstimate:
    """Hutch++: exact trace on a sketched top subspace plus Hutchinson on its complement.

    With m = ``num_matvecs``: s = m // 3 sketch vectors S, Q = orth(A S); tr(Q^T A Q) (s matvecs) +
    Hutchinson with m - 2s Rademacher probes projected off Q. ``stderr`` is that of the Hutchinson part
    (the sketched part is deterministic given S). Beats Hutchinson when the spectrum decays fast.
    """
    m = int(num_matvecs)
    if m < 3:
        raise ValueError(f"hutchpp needs num_matvecs >= 3, got {m}")
    dim = int(op.dim)
    gen = torch.Generator().manual_seed(int(seed))
    s = m // 3
    g = m - 2 * s
    sketch = draw_probes(dim, s, gen, "rademacher")
    q, _ = torch.linalg.qr(apply(op, sketch, batch_size))
    top = float(torch.sum(q * apply(op, q, batch_size)))
    z = draw_probes(dim, g, gen, "rademacher")
    z = z - q @ (q.T @ z)
    samples = (z * apply(op, z, batch_size)).sum(dim=0)
    mean, stderr = _mean_stderr(samples)
    return TraceEstimate(top + mean, stderr, s + q.shape[1] + g, "hutch++", g, int(seed))
