"""PC layer (polynomial weight preconditioning): polynomials, predicted spectra, merge and convert.

A PC layer replaces a weight ``W`` by ``W_eff = gamma * sg(s_hat) * p_k(W / s_hat)`` where ``s_hat``
estimates the spectral norm (power iteration) and ``p_k(x) = x q_k(x^2)`` is an odd polynomial that
lifts small singular values by ``q_k(0)`` while keeping ``p_k(1) = 1``. Because ``p_k`` acts on each
singular value, the preconditioned spectrum is predicted exactly from the plain one; this module
gives that prediction, the matrix polynomial itself and the iid reference for the modified condition
number; merging and converting weights live in :mod:`hessian_spectra.analyses.advice.pc_merge`.
"""

from __future__ import annotations

import math
from functools import cache, lru_cache

import numpy as np
import torch
from hessian_spectra.errors import InputError

#: Coefficients of q_k(t) in increasing powers of t (PC-layer paper, levels 1-4).
PC_COEFFS: dict[int, tuple[float, ...]] = {
    1: (1.507, -0.507),
    2: (2.083, -1.643, 0.560),
    3: (2.909, -4.649, 4.023, -1.283),
    4: (3.625, -9.261, 14.097, -10.351, 2.890),
}
LEVELS = (1, 2, 3, 4)

#: Criterion for "safe" spectral-norm under-estimates: a singular value at x = sigma/s_hat > 1 may be
#: amplified to at most p_max + SAFE_AMPLIFY_TOL and shrunk to no less than 1 - SAFE_SHRINK_TOL.
SAFE_AMPLIFY_TOL = 0.01
SAFE_SHRINK_TOL = 0.03

#: Power iterations a PC layer runs per forward (warm-started in training; cold here, a worst case).
POWER_ITERATIONS = 10


def _check_level(level: int) -> int:
    if level not in PC_COEFFS:
        raise InputError(None, f"PC level must be one of {LEVELS}, got {level!r}")
    return int(level)


def q_poly(level: int, t: np.ndarray | float) -> np.ndarray:
    """q_k(t) evaluated elementwise (Horner, float64)."""
    coeffs = PC_COEFFS[_check_level(level)]
    t = np.asarray(t, dtype=np.float64)
    out = np.full_like(t, coeffs[-1])
    for a in reversed(coeffs[:-1]):
        out = out * t + a
    return out


def p_poly(level: int, x: np.ndarray | float) -> np.ndarray:
    """p_k(x) = x q_k(x^2) elementwise: the map a PC layer applies to each normalised singular value."""
    x = np.asarray(x, dtype=np.float64)
    return x * q_poly(level, x * x)


def _p_derivative(level: int) -> np.polynomial.Polynomial:
    coeffs = PC_COEFFS[_check_level(level)]
    pc = np.zeros(2 * len(coeffs))
    pc[1::2] = coeffs
    return np.polynomial.Polynomial(pc).deriv()


@cache
def p_peak(level: int) -> tuple[float, float]:
    """(x_star, p_max): the first positive critical point of p_k and its value, the maximum on [0, 1].

    p_k is increasing on [0, x_star]; that branch is the one :func:`p_inverse` uses.
    """
    roots = _p_derivative(level).roots()
    real = sorted(r.real for r in roots if abs(r.imag) < 1e-12 and r.real > 0)
    x_star = real[0] if real and real[0] < 1.0 else 1.0
    grid = np.linspace(0.0, 1.0, 20001)
    p_max = max(float(p_poly(level, x_star)), float(p_poly(level, grid).max()))
    return float(x_star), p_max


def p_max(level: int) -> float:
    """max of p_k on [0, 1] (1.000, 1.010, 1.019, 1.021 for k = 1..4)."""
    return p_peak(level)[1]


@cache
def safe_ratio(level: int) -> float:
    """Largest sigma_max / s_hat for which p_k stays within [1 - SAFE_SHRINK_TOL, p_max + SAFE_AMPLIFY_TOL]
    on [1, ratio]: beyond it an under-estimated spectral norm amplifies (level 2, 4) or shrinks (1, 3)
    the top direction noticeably. Computed on a fine grid (about 1.1 for every level)."""
    pm = p_max(level)
    xs = np.linspace(1.0, 2.0, 100001)
    vals = p_poly(level, xs)
    bad = (vals > pm + SAFE_AMPLIFY_TOL) | (vals < 1.0 - SAFE_SHRINK_TOL)
    idx = int(np.argmax(bad)) if bad.any() else len(xs)
    return float(xs[max(idx - 1, 0)])


def p_inverse(level: int, y: np.ndarray) -> np.ndarray:
    """Solve p_k(x) = y for x on the increasing branch [0, x_star] (vectorised bisection, fp64).

    Raises InputError when some y is negative or above p_max (no solution on that branch).
    """
    y = np.asarray(y, dtype=np.float64)
    x_star, pm = p_peak(level)
    if np.any(y < 0) or np.any(y > pm * (1 + 1e-14)):
        raise InputError(
            None, f"p_{level}(x) = y has no solution on [0, {x_star:.4f}] for y outside [0, {pm:.6f}]"
        )
    lo = np.zeros_like(y)
    hi = np.full_like(y, x_star)
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        below = p_poly(level, mid) < y
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def apply_pc(
    matrix: torch.Tensor, level: int, s_hat: float | torch.Tensor, gamma: float = 1.0
) -> torch.Tensor:
    """gamma * s_hat * p_k(W / s_hat) as a matrix polynomial: X q(X^T X) (tall) or q(X X^T) X (wide).

    This is what a PC layer computes in its forward pass (with s_hat detached); cost 4rc^2 + 2(k-1)c^3.
    """
    coeffs = PC_COEFFS[_check_level(level)]
    if matrix.ndim != 2:
        raise InputError(None, f"apply_pc needs a 2-D matrix, got shape {tuple(matrix.shape)}")
    x = matrix / s_hat
    tall = x.shape[0] >= x.shape[1]
    gram = x.T @ x if tall else x @ x.T
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    q = coeffs[-1] * gram + coeffs[-2] * eye  # Horner with k - 1 matrix products
    for a in reversed(coeffs[:-2]):
        q = q @ gram + a * eye
    out = x @ q if tall else q @ x
    return (gamma * s_hat) * out


def extra_forward_flops(
    rows: int, cols: int, level: int, power_iterations: int = POWER_ITERATIONS
) -> dict[str, int]:
    """Extra FLOPs per forward pass for one matrix: polynomial 4rc^2 + 2(k-1)c^3 (c = min dim, r = max
    dim) plus 4rc per power iteration; independent of the number of tokens, so it is amortised over the
    batch: ``tokens_equivalent`` = total / (2rc), the number of tokens whose matmul costs the same."""
    r, c = max(rows, cols), min(rows, cols)
    poly = 4 * r * c * c + 2 * (_check_level(level) - 1) * c**3
    power = 4 * r * c * power_iterations
    total = poly + power
    # the layer's own matmul costs 2rc FLOPs per token: the overhead equals this many extra tokens
    return {
        "polynomial": int(poly),
        "power_iteration": int(power),
        "total": int(total),
        "tokens_equivalent": total / (2 * r * c),
    }


# ----------------------------------------------------------------------------------------------------
# spectrum statistics


def condition_number(sigma: np.ndarray) -> float:
    """sigma_1 / sigma_min (inf when sigma_min is 0)."""
    s = np.sort(np.asarray(sigma, dtype=np.float64))[::-1]
    return float(s[0] / s[-1]) if s[-1] > 0 else math.inf


def modified_condition_number(sigma: np.ndarray, fraction: float = 0.1) -> float:
    """sigma_1 / mean of the bottom ceil(fraction * n) singular values (PC paper; robust to a few zeros)."""
    s = np.sort(np.asarray(sigma, dtype=np.float64))
    k = max(1, math.ceil(fraction * s.size))
    bottom = float(s[:k].mean())
    return float(s[-1] / bottom) if bottom > 0 else math.inf


def stable_rank(sigma: np.ndarray) -> float:
    """sum sigma^2 / sigma_1^2."""
    s = np.asarray(sigma, dtype=np.float64)
    top = float(np.max(s))
    return float(np.sum(s * s) / (top * top)) if top > 0 else 0.0


def predicted_singular_values(
    sigma: np.ndarray, level: int, s_hat: float | None = None, gamma: float = 1.0
) -> np.ndarray:
    """Singular values of gamma * s_hat * p_k(W / s_hat), descending, from those of W (exact: p_k acts per
    singular value; |.| because p_k may go negative far beyond 1). s_hat defaults to sigma_max."""
    s = np.asarray(sigma, dtype=np.float64)
    if s_hat is None:
        s_hat = float(np.max(s))
    out = np.abs(gamma * s_hat * p_poly(level, s / s_hat))
    return np.sort(out)[::-1]


# ----------------------------------------------------------------------------------------------------
# iid reference (Marchenko-Pastur)


@lru_cache(maxsize=64)
def _mp_sigma_quantile_fn(aspect: float):
    """Quantile function of one singular value of an N x M iid matrix (entries variance 1/N, y = M/N <= 1)
    in the large-size limit: the MP law in sigma, CDF tabulated on a cosine grid that absorbs the
    square-root edges."""
    y = 1.0 / aspect
    a, b = 1.0 - math.sqrt(y), 1.0 + math.sqrt(y)
    theta = np.linspace(0.0, math.pi, 200001)
    s = a + (b - a) * (1 - np.cos(theta)) / 2
    ds_dtheta = (b - a) * np.sin(theta) / 2
    # density of sigma: sqrt((b^2 - s^2)(s^2 - a^2)) / (pi y s); for y = 1 this is sqrt(4 - s^2)/pi
    with np.errstate(invalid="ignore", divide="ignore"):
        if y == 1.0:
            dens = np.sqrt(np.clip(4 - s * s, 0, None)) / math.pi
        else:
            dens = np.sqrt(np.clip((b * b - s * s) * (s * s - a * a), 0, None)) / (math.pi * y * s)
    integrand = dens * ds_dtheta
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (integrand[1:] + integrand[:-1]) * np.diff(theta))])
    cdf /= cdf[-1]
    return lambda u: np.interp(u, cdf, s), b


@lru_cache(maxsize=256)
def iid_modified_condition_number(rows: int, cols: int, fraction: float = 0.1) -> float:
    """Modified condition number of an iid (Gaussian-like) matrix of this shape, from the Marchenko-Pastur law.

    sigma_1 is the upper MP edge 1 + sqrt(y); the bottom ceil(fraction * M) singular values sit at their
    classical locations Q((i - 1/2) / M). Deterministic (no sampling), cached per shape.

    Checked against seeded Monte Carlo (Gaussian entries, mean over samples): aspect 2.75 gives 3.27 at
    176x64 (MC 3.23) and 3.31 at 2816x1024, the REFERENCE's ~3.3. Square matrices are size dependent: the
    MP law of lambda = sigma^2 touches 0 (the sigma density stays 2/pi there), so the smallest singular
    values scale like 1/M and the ceil(10%) window is a different fraction for small M. Classical vs MC:
    32x32 20.4 vs 22.5; 64x64 23.3 vs 24.0; 128x128 25.1 vs 26.2; 256x256 25.1 vs 25.1; 512x512 25.1 vs
    25.0; limit 25.45 (the REFERENCE's ~25). Below ~128 treat the square reference as +-10%.
    """
    n, m = max(rows, cols), min(rows, cols)
    if m < 1:
        raise InputError(None, f"shape ({rows}, {cols}) has no singular values")
    quantile, edge = _mp_sigma_quantile_fn(n / m)
    k = max(1, math.ceil(fraction * m))
    bottom = quantile((np.arange(k) + 0.5) / m)
    return float(edge / bottom.mean())


def iid_condition_number(rows: int, cols: int) -> float:
    """(1 + sqrt y)/(1 - sqrt y) for y = min/max < 1 (the MP limit); inf for square (size dependent)."""
    y = min(rows, cols) / max(rows, cols)
    return math.inf if y >= 1 else (1 + math.sqrt(y)) / (1 - math.sqrt(y))


# ----------------------------------------------------------------------------------------------------
# power-iteration estimate of the spectral norm, simulated from the singular values


def power_iteration_ratio(
    sigma: np.ndarray, iterations: int = POWER_ITERATIONS, seed: int = 0, trials: int = 32
) -> dict[str, float]:
    """sigma_max / s_hat after ``iterations`` cold-start power iterations with a Gaussian start.

    The Gaussian start is rotation invariant, so in the singular basis its coordinates are iid N(0, 1)
    and the estimate ||W v_t|| depends only on the singular values: simulated exactly here over
    ``trials`` seeded starts. Returns the median and worst ratio (>= 1: power iteration under-estimates).
    """
    s = np.asarray(sigma, dtype=np.float64)
    top = float(np.max(s))
    if top <= 0:
        return {"median": 1.0, "worst": 1.0}
    x2 = (s / top) ** 2
    rng = np.random.default_rng(seed)
    ratios = [1.0 / _power_estimate(x2, rng.standard_normal(s.size), iterations) for _ in range(trials)]
    return {"median": float(np.median(ratios)), "worst": float(np.max(ratios))}


def _power_estimate(x2: np.ndarray, coeffs: np.ndarray, iterations: int) -> float:
    """||W v_t|| / sigma_max after t steps of v <- W^T W v / |.| from v_0 = sum_i coeffs_i v_i, in the singular
    basis (x2 = (sigma_i / sigma_max)^2)."""
    w = coeffs**2 * x2 ** (2 * iterations)
    total = float(np.sum(w))
    return math.sqrt(float(np.sum(w * x2)) / total) if total > 0 else 1.0
