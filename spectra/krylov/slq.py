"""Stochastic Lanczos quadrature (SLQ): spectral density and trace of a symmetric operator.

For each normalised probe v, m Lanczos steps give T_m = Q diag(theta) Q^T; the Gauss quadrature nodes
theta_i with weights tau_i = Q[0, i]^2 satisfy v^T f(A) v ~ sum_i tau_i f(theta_i). Averaging over probes
estimates (1/dim) tr f(A): with f a kernel, the smoothed spectral density; with f(x) = x, tr(A) / dim.
All bookkeeping is float64 (see :mod:`hessian_spectra.krylov.chain`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from hessian_spectra.io import json_safe
from hessian_spectra.krylov.chain import _Chain
from hessian_spectra.krylov.convergence import _eig_tridiagonal
from hessian_spectra.krylov.deflation import Deflation, deflate
from hessian_spectra.krylov.density import (  # noqa: F401  (re-exported: the density API lived here)
    DEFAULT_SIGMA_FRACTION,
    GRID_MARGIN_SIGMAS,
    Kind,
    SpectralDensity,
    default_sigma_fraction,
    density_l1,
    exact_density,
    kernel_mixture,
)
from hessian_spectra.krylov.intervals import DEFAULT_LEVEL, Interval, rounding_level
from hessian_spectra.krylov.lanczos import _block_ids, block_seed
from hessian_spectra.krylov.linop import LinearOperator, MultiOperator
from hessian_spectra.krylov.trace import draw_probes


@dataclass(frozen=True, eq=False)
class SLQResult:
    """Quadrature nodes/weights of every probe (rows; padded with weight 0 where a probe's Krylov space
    closed early, see ``steps_taken``), the trace estimate dim * mean_v sum_i tau_i theta_i with its
    standard error across probes, and the extreme Ritz values seen.

    For the uncertainty (:mod:`hessian_spectra.krylov.slq_stats`): ``second_moments`` (per probe
    dim ||A v||^2, unbiased for ||A||_F^2), ``deflation`` (the first probe's Krylov space as a sketch of
    the trace), ``eps`` (unit roundoff of the operator dtype) and ``exact`` (nodes/weights are the exact
    spectrum, e.g. from a dense eigendecomposition: zero-width intervals).
    """

    nodes: np.ndarray
    weights: np.ndarray
    steps_taken: tuple[int, ...]
    dim: int
    num_probes: int
    steps: int
    seed: int
    probe: str
    reorthogonalize: bool
    num_matvecs: int
    trace: float
    trace_stderr: float
    ritz_min: float
    ritz_max: float
    name: str | None = None
    second_moments: np.ndarray | None = None
    deflation: Deflation | None = None
    eps: float = 0.0
    exact: bool = False

    @property
    def trace_samples(self) -> np.ndarray:
        """Per-probe trace samples dim * sum_i tau_i theta_i (= z^T A z with z = sqrt(dim) v); their mean
        is ``trace``."""
        return self.dim * np.sum(self.nodes * self.weights, axis=1)

    @property
    def rounding(self) -> float:
        """Rounding of one probe's trace sample (``eps`` x ||z|| x ||A z||, see
        :func:`hessian_spectra.krylov.intervals.rounding_level`)."""
        if self.second_moments is None or self.second_moments.size == 0:
            return 0.0
        image = math.sqrt(max(float(np.max(self.second_moments)), 0.0))
        return rounding_level(self.eps, math.sqrt(self.dim), image)

    def exact_eigenvalues(self) -> np.ndarray | None:
        """Every eigenvalue when known exactly (else None): ``exact`` results keep them in row 0 of ``nodes``;
        a first probe whose Krylov space spanned the whole operator has them as its Ritz values."""
        if self.exact or self.dim == 1 or (self.deflation is not None and self.deflation.full):
            return self.nodes[0, : self.steps_taken[0]].copy()
        return None

    def density_sigma(self) -> float:
        """The kernel width :meth:`density` uses by default: :func:`default_sigma_fraction` of the node range."""
        span = self.ritz_max - self.ritz_min
        scale = span if span > 0 else max(abs(self.ritz_max), 1e-12)
        return default_sigma_fraction(self.steps) * scale

    def trace_interval(self, level: float = DEFAULT_LEVEL, method: str = "auto") -> Interval:
        """The trace with a ``level`` confidence interval: exact, Krylov-deflated or plain
        (:func:`hessian_spectra.krylov.slq_stats.trace_interval`)."""
        from hessian_spectra.krylov.slq_stats import trace_interval

        return trace_interval(self, level, method)

    def mass_below(
        self, threshold: float = 0.0, *, sigma: float | None = None, level: float = DEFAULT_LEVEL
    ) -> Interval:
        """Fraction of the (smoothed, or with ``sigma=0`` hard-counted) spectrum below ``threshold``
        (:func:`hessian_spectra.krylov.slq_stats.mass_below`)."""
        from hessian_spectra.krylov.slq_stats import mass_below

        return mass_below(self, threshold, sigma, level)

    def mass_above(
        self, threshold: float = 0.0, *, sigma: float | None = None, level: float = DEFAULT_LEVEL
    ) -> Interval:
        """Fraction of the spectrum above ``threshold``: 1 - :meth:`mass_below`."""
        b = self.mass_below(threshold, sigma=sigma, level=level)
        return Interval(1.0 - b.estimate, b.stderr, 1.0 - b.ci_high, 1.0 - b.ci_low, b.level, b.probes,
                        b.method, b.dof, b.estimator)  # fmt: skip

    def density_band(self, level: float = DEFAULT_LEVEL, **density_kwargs: Any) -> Any:
        """A pointwise ``level`` band around :meth:`density` (same keyword arguments), Student t over probes
        (:func:`hessian_spectra.krylov.slq_stats.density_band`)."""
        from hessian_spectra.krylov.slq_stats import density_band

        return density_band(self, self.density(**density_kwargs), level)

    def negative_share(self, level: float = DEFAULT_LEVEL, *, n_boot: int = 2000, seed: int = 0) -> Interval:
        """Share of absolute curvature that is negative, bootstrapped over probes
        (:func:`hessian_spectra.krylov.slq_stats.negative_share`)."""
        from hessian_spectra.krylov.slq_stats import negative_share

        return negative_share(self, level, n_boot, seed)

    def density(
        self,
        grid: np.ndarray | Sequence[float] | None = None,
        *,
        sigma: float | None = None,
        num_points: int = 1000,
        kind: Kind = "gaussian",
    ) -> SpectralDensity:
        """Smoothed density (1/n_v) sum_v sum_i tau_i g_sigma(t - theta_i).

        ``sigma`` defaults to :func:`default_sigma_fraction` of the node range (ritz_max - ritz_min);
        the default grid spans the nodes plus :data:`GRID_MARGIN_SIGMAS` sigmas with ``num_points``.
        """
        if sigma is None:
            sigma = self.density_sigma()
        sigma = float(sigma)
        if grid is None:
            pad = GRID_MARGIN_SIGMAS * sigma
            grid = np.linspace(self.ritz_min - pad, self.ritz_max + pad, int(num_points))
        grid = np.asarray(grid, dtype=np.float64)
        values = kernel_mixture(grid, self.nodes, self.weights / self.num_probes, sigma, kind)
        return SpectralDensity(grid, values, sigma, kind, self.dim)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(
            {
                "method": "slq",
                "name": self.name,
                "dim": self.dim,
                "num_probes": self.num_probes,
                "steps": self.steps,
                "steps_taken": list(self.steps_taken),
                "seed": self.seed,
                "probe": self.probe,
                "reorthogonalize": self.reorthogonalize,
                "num_matvecs": self.num_matvecs,
                "trace": self.trace,
                "trace_stderr": self.trace_stderr,
                "ritz_min": self.ritz_min,
                "ritz_max": self.ritz_max,
                "exact": self.exact,
                "trace_ci": self.trace_interval().to_dict(),
                "deflation": None if self.deflation is None else self.deflation.to_dict(),
                "nodes": self.nodes,
                "weights": self.weights,
            }
        )


def _validate(num_probes: int, steps: int, probe: str) -> None:
    if num_probes < 1:
        raise ValueError(f"num_probes must be >= 1, got {num_probes}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if probe not in ("rademacher", "gaussian"):
        raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {probe!r}")


def _probe(dim: int, gen: torch.Generator, probe: str) -> torch.Tensor:
    z = draw_probes(dim, 1, gen, probe)[:, 0]
    return z / torch.linalg.vector_norm(z)


def _new_chain(
    dim: int, dtype: torch.dtype, device: torch.device, v: torch.Tensor, m: int, reorth: bool
) -> _Chain:
    return _Chain(dim, dtype, device, v, max_steps=m, reorthogonalize=reorth, restart=False)


def _assemble(
    chains: list[_Chain],
    dim: int,
    m: int,
    seed: int,
    probe: str,
    reorth: bool,
    name: str | None,
    deflation: Deflation | None = None,
) -> SLQResult:
    n_v = len(chains)
    nodes = np.zeros((n_v, m))
    weights = np.zeros((n_v, m))
    # dim ||A v||^2 = dim (alpha_1^2 + beta_1^2): A v = alpha_1 v + beta_1 q_2
    second = np.array([dim * (c.alphas[0] ** 2 + (c.betas[0] ** 2 if c.betas else 0.0)) for c in chains])
    taken = []
    for i, c in enumerate(chains):
        a, b = c.tridiagonal()
        theta, s = _eig_tridiagonal(a, b)
        nodes[i, : theta.size] = theta
        weights[i, : theta.size] = s[0, :] ** 2
        taken.append(int(theta.size))
    per_probe = dim * np.sum(nodes * weights, axis=1)
    trace = float(per_probe.mean())
    stderr = float(per_probe.std(ddof=1) / math.sqrt(n_v)) if n_v > 1 else float("nan")
    valid = np.concatenate([nodes[i, :t] for i, t in enumerate(taken)])
    return SLQResult(
        nodes=nodes,
        weights=weights,
        steps_taken=tuple(taken),
        dim=dim,
        num_probes=n_v,
        steps=m,
        seed=int(seed),
        probe=probe,
        reorthogonalize=reorth,
        num_matvecs=int(sum(taken)),
        trace=trace,
        trace_stderr=stderr,
        ritz_min=float(valid.min()),
        ritz_max=float(valid.max()),
        name=name,
        second_moments=second,
        deflation=deflation,
        eps=float(torch.finfo(chains[0].op_dtype).eps) if chains[0].op_dtype.is_floating_point else 0.0,
    )


def _redraw(dim: int, state: torch.Tensor, probe: str):
    """A function drawing the same normalised probes, in order, as a generator in ``state`` will."""
    gen = torch.Generator()
    gen.set_state(state)
    return lambda: _probe(dim, gen, probe)


def slq(
    op: LinearOperator,
    *,
    num_probes: int = 10,
    steps: int = 30,
    seed: int = 0,
    probe: Literal["rademacher", "gaussian"] = "rademacher",
    reorthogonalize: bool = True,
    deflate_trace: bool = True,
) -> SLQResult:
    """SLQ with ``num_probes`` probes of ``steps`` Lanczos steps each (fewer when dim is smaller or a
    probe's Krylov space closes, where the quadrature is exact). Probes come from ``seed`` in order.
    ``deflate_trace``: keep what the first probe's basis says about the others' trace samples
    (:mod:`hessian_spectra.krylov.deflation`; needs ``reorthogonalize``; no extra matvec)."""
    _validate(num_probes, steps, probe)
    dim = int(op.dim)
    m = min(int(steps), dim)
    gen = torch.Generator().manual_seed(int(seed))
    chains = []
    defl = None
    for i in range(int(num_probes)):
        c = _new_chain(dim, op.dtype, op.device, _probe(dim, gen, probe), m, reorthogonalize)
        state = gen.get_state() if i == 0 and deflate_trace else None
        while not c.done:
            c.push(op.matvec(c.vector()))
        if state is not None:  # the first probe's basis deflates the others' trace samples
            defl = deflate(c, dim, int(num_probes) - 1, _redraw(dim, state, probe))
        c.release()  # only the tridiagonal is needed from here on
        chains.append(c)
    return _assemble(chains, dim, m, seed, probe, reorthogonalize, None, defl)


def slq_lockstep(
    mop: MultiOperator,
    *,
    num_probes: int = 10,
    steps: int = 30,
    seed: int = 0,
    probe: Literal["rademacher", "gaussian"] = "rademacher",
    reorthogonalize: bool = True,
    indices: Sequence[int] | None = None,
    deflate_trace: bool = True,
) -> list[SLQResult]:
    """SLQ on every block of ``mop`` with all blocks' chains advanced together (one ``matvec_many`` per
    step). Block ``b`` uses seed ``block_seed(seed, b)``: its result equals
    ``slq(block_b, seed=block_seed(seed, b))`` bit for bit, whatever other blocks are present.
    ``indices[b]`` replaces ``b`` in the seed (a subset of a larger block list draws that list's probes);
    ``deflate_trace`` as in :func:`slq`."""
    _validate(num_probes, steps, probe)
    dims = [int(d) for d in mop.dims]
    ms = [min(int(steps), d) for d in dims]
    ids = _block_ids(indices, len(dims))
    gens = [torch.Generator().manual_seed(block_seed(seed, i)) for i in ids]
    per_block: list[list[_Chain]] = [[] for _ in dims]
    defl: list[Deflation | None] = [None] * len(dims)
    for i in range(int(num_probes)):
        chains = [
            _new_chain(d, mop.dtype, mop.device, _probe(d, g, probe), m, reorthogonalize)
            for d, g, m in zip(dims, gens, ms, strict=True)
        ]
        states = [g.get_state() for g in gens] if i == 0 and deflate_trace else None
        while not all(c.done for c in chains):
            outs = mop.matvec_many([None if c.done else c.vector() for c in chains])
            for b, (c, out) in enumerate(zip(chains, outs, strict=True)):
                if c.done:
                    continue
                if out is None:
                    raise RuntimeError(f"matvec_many returned None for running block {mop.names[b]!r}")
                c.push(out)
        for b, c in enumerate(chains):
            if states is not None:  # see slq: the first probe's basis deflates the others' trace samples
                defl[b] = deflate(c, dims[b], int(num_probes) - 1, _redraw(dims[b], states[b], probe))
            c.release()  # only the tridiagonal is needed from here on
            per_block[b].append(c)
    return [
        _assemble(
            per_block[b],
            dims[b],
            ms[b],
            block_seed(seed, ids[b]),
            probe,
            reorthogonalize,
            str(mop.names[b]),
            defl[b],
        )
        for b in range(len(dims))
    ]
