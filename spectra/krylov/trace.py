"""Stochastic trace estimators with standard errors and confidence intervals: Hutchinson, Hutch++
(Meyer et al., 2021), an exact path, and :func:`trace_estimate`, which picks among them.

Probes are drawn in float64 on the CPU from a seeded generator, cast to the operator dtype/device for the
matvec; every dot product and the QR of Hutch++ are float64. An operator with a ``matmat(V)`` method
taking and returning ``(dim, n)`` tensors is used batched; otherwise probes go through ``matvec``.
Intervals: :meth:`TraceEstimate.interval` (Student t over probes; for Hutch++ on its Hutchinson part,
the sketched part being exact given the sketch). Design notes: spectra/docs/uncertainty.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from hessian_spectra.io import json_safe
from hessian_spectra.krylov.intervals import (
    DEFAULT_LEVEL,
    Interval,
    exact_interval,
    rounding_level,
    t_interval,
    t_quantile,
    variance_bound,
)
from hessian_spectra.krylov.linop import LinearOperator

Probe = Literal["rademacher", "gaussian"]


@dataclass(frozen=True, eq=False)
class TraceEstimate:
    """A trace estimate with the standard error of its stochastic part (None/NaN when not estimable).

    For :meth:`interval`: ``samples`` (per-probe values of the stochastic part; ``offset`` + their mean
    is ``value``), ``second`` (per-probe ||C z||^2 of the sampled operator C: the variance bound used
    when every probe agrees), ``rounding`` (one sample's rounding), ``eps`` (the operator's unit
    roundoff), ``dim``, ``probe``, ``exact``.
    """

    value: float
    stderr: float
    num_matvecs: int
    method: str
    num_probes: int
    seed: int
    samples: np.ndarray | None = None
    offset: float = 0.0
    second: np.ndarray | None = None
    rounding: float = 0.0
    eps: float = 0.0
    dim: int = 0
    probe: str = "rademacher"
    exact: bool = False

    _KEYS = ("value", "stderr", "num_matvecs", "method", "num_probes", "seed")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TraceEstimate):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self._KEYS)

    __hash__ = None  # type: ignore[assignment]

    def interval(self, level: float = DEFAULT_LEVEL) -> Interval:
        """``value`` with a ``level`` confidence interval (:func:`hessian_spectra.krylov.intervals.t_interval`
        on ``samples``; from ``stderr`` alone with ``num_probes - 1`` dof when the samples are unknown)."""
        if self.exact:
            return exact_interval(self.value, self.num_probes, self.method, level)
        if self.samples is None:
            se, dof = float(self.stderr), max(int(self.num_probes) - 1, 1)
            if not math.isfinite(se):
                return Interval(self.value, math.inf, -math.inf, math.inf, level, self.num_probes, "unbounded",
                                None, self.method)  # fmt: skip
            half = t_quantile(level, dof) * se
            return Interval(self.value, se, self.value - half, self.value + half, level, self.num_probes, "t",
                            dof, self.method)  # fmt: skip
        x = np.asarray(self.samples, dtype=np.float64)
        gauss = self.probe == "gaussian"
        bound = variance_bound(self.second, float(x.mean()), self.dim, self.eps, centred=not gauss)
        chance = None if bound is None else 0.0 if gauss else 2.0 ** (-(x.size - 1))
        return t_interval(
            x, level=level, offset=self.offset, rounding=self.rounding, variance_bound=bound,
            chance_agreement=chance, estimator=self.method,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return json_safe({**{k: getattr(self, k) for k in self._KEYS}, "interval": self.interval().to_dict()})


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


def _eps(op: LinearOperator) -> float:
    dt = getattr(op, "dtype", torch.float64)
    return float(torch.finfo(dt).eps) if dt.is_floating_point else 0.0


def _probe_stats(
    op: LinearOperator, z: torch.Tensor, az: torch.Tensor
) -> tuple[torch.Tensor, np.ndarray, float]:
    """Per-probe z^T A z, ||A z||^2 and the rounding of one sample."""
    second = (az * az).sum(dim=0).cpu().numpy()
    znorm = float(torch.linalg.vector_norm(z, dim=0).max()) if z.numel() else 0.0
    rnd = rounding_level(_eps(op), znorm, math.sqrt(float(second.max()))) if second.size else 0.0
    return (z * az).sum(dim=0), second, rnd


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
    y, second, rnd = _probe_stats(op, z, az)
    mean, stderr = _mean_stderr(y)
    return TraceEstimate(
        mean, stderr, int(num_probes), f"hutchinson-{probe}", int(num_probes), int(seed),
        samples=y.cpu().numpy(), second=second, rounding=rnd, eps=_eps(op), dim=int(op.dim), probe=probe,
    )  # fmt: skip


def _sketch(op: LinearOperator, s: int, gen: torch.Generator, batch_size: int):
    """Hutch++'s sketch: Rademacher S (dim x s), A S, Q = orth(A S), A Q."""
    sketch = draw_probes(int(op.dim), s, gen, "rademacher")
    a_s = apply(op, sketch, batch_size)
    q, _ = torch.linalg.qr(a_s)
    return sketch, a_s, q, apply(op, q, batch_size)


def _deflated_part(
    op: LinearOperator,
    q: torch.Tensor,
    aq: torch.Tensor,
    g: int,
    gen: torch.Generator,
    batch_size: int,
    seed: int,
) -> TraceEstimate:
    """tr(Q^T A Q) + Hutchinson on P A P with ``g`` projected sign vectors (t on that part: the sketched
    part is exact given the sketch, and the projected samples are iid given it)."""
    dim = int(op.dim)
    top = float(torch.sum(q * aq))
    if q.shape[1] >= dim:  # the sketch spans everything: tr(Q^T A Q) is the trace
        return TraceEstimate(
            top, 0.0, 2 * q.shape[1], "hutch++", 0, int(seed), offset=top, dim=dim, exact=True
        )
    z = draw_probes(dim, g, gen, "rademacher")
    z = z - q @ (q.T @ z)
    az = apply(op, z, batch_size)
    y, _, rnd = _probe_stats(op, z, az)
    paz = az - q @ (q.T @ az)  # ||P A P z||^2: the residual operator's own second moment
    second = (paz * paz).sum(dim=0).cpu().numpy()
    mean, stderr = _mean_stderr(y)
    return TraceEstimate(
        top + mean, stderr, 2 * q.shape[1] + g, "hutch++", g, int(seed), samples=y.cpu().numpy(), offset=top,
        second=second, rounding=rnd, eps=_eps(op), dim=dim,
    )  # fmt: skip


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
    gen = torch.Generator().manual_seed(int(seed))
    s = m // 3
    _, _, q, aq = _sketch(op, s, gen, batch_size)
    res = _deflated_part(op, q, aq, m - 2 * s, gen, batch_size, seed)
    return replace(res, num_matvecs=s + res.num_matvecs - q.shape[1])


TRACE_ESTIMATORS = ("auto", "exact", "hutchinson", "hutch++")


def exact_trace(op: LinearOperator, *, batch_size: int = 16) -> TraceEstimate:
    """sum_i e_i^T A e_i: ``dim`` matvecs of unit vectors, exact up to rounding."""
    dim = int(op.dim)
    total = 0.0
    for start in range(0, dim, batch_size):
        cols = min(batch_size, dim - start)
        e = torch.zeros(dim, cols, dtype=torch.float64)
        e[torch.arange(start, start + cols), torch.arange(cols)] = 1.0
        total += float(torch.sum(e * apply(op, e, batch_size)))
    return TraceEstimate(total, 0.0, dim, "exact", 0, 0, offset=total, dim=dim, exact=True)


def trace_estimate(
    op: LinearOperator,
    *,
    num_matvecs: int = 60,
    seed: int = 0,
    method: str = "auto",
    batch_size: int = 16,
) -> TraceEstimate:
    """The trace within ``num_matvecs`` matvecs, by ``method`` (one of :data:`TRACE_ESTIMATORS`).

    ``auto``: exact when dim <= num_matvecs; otherwise Hutch++'s sketch is built first (2 s matvecs,
    s = num_matvecs // 3) and decides: with F2 = mean ||A s_j||^2 (unbiased for ||A||_F^2) the residual
    ||P A P||_F^2 = F2 - 2 ||A Q||_F^2 + ||Q^T A Q||_F^2 is known, so Hutch++'s variance 2 ||PAP||_F^2 / g
    (g = num_matvecs - 2 s probes left) is compared with Hutchinson's 2 (F2 - tr^2/n) / (s + g) on the
    sketch's own sign vectors plus g new ones; the smaller wins (measured in bench/RESULTS.md).
    """
    if method not in TRACE_ESTIMATORS:
        raise ValueError(f"method must be one of {', '.join(TRACE_ESTIMATORS)}, got {method!r}")
    m, dim = int(num_matvecs), int(op.dim)
    if method == "exact" or (method == "auto" and dim <= m):
        return exact_trace(op, batch_size=batch_size)
    if method == "hutchinson":
        return hutchinson(op, num_probes=m, seed=seed, batch_size=batch_size)
    if method == "hutch++":
        return hutchpp(op, num_matvecs=m, seed=seed, batch_size=batch_size)
    if m < 3:
        raise ValueError(f"trace_estimate needs num_matvecs >= 3 unless dim <= num_matvecs, got {m}")
    gen = torch.Generator().manual_seed(int(seed))
    s = m // 3
    g = m - 2 * s
    sketch, a_s, q, aq = _sketch(op, s, gen, batch_size)
    y0, f0, r0 = _probe_stats(op, sketch, a_s)
    f2 = float(f0.mean())
    qaq = q.T @ aq
    resid = f2 - 2.0 * float((aq * aq).sum()) + float((qaq * qaq).sum())
    var_pp = 2.0 * max(resid, 0.0) / g
    var_h = 2.0 * max(f2 - float(y0.mean()) ** 2 / dim, 0.0) / (s + g)
    if var_pp <= var_h:
        res = _deflated_part(op, q, aq, g, gen, batch_size, seed)
        return replace(res, num_matvecs=s + res.num_matvecs - q.shape[1])
    z = draw_probes(dim, g, gen, "rademacher")
    y1, f1, r1 = _probe_stats(op, z, apply(op, z, batch_size))
    y = torch.cat([y0, y1])
    mean, stderr = _mean_stderr(y)
    return TraceEstimate(
        mean, stderr, m, "hutchinson-rademacher", s + g, int(seed), samples=y.cpu().numpy(),
        second=np.concatenate([f0, f1]), rounding=max(r0, r1), eps=_eps(op), dim=dim,
    )  # fmt: skip
