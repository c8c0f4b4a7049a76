"""Exact singular values of one weight matrix: float64 SVD or slab-wise Gram + eigvalsh, numpy or torch.

Also home of what the batched (``svd_batched``) and partial (``svd_partial``) paths share: the NaN/Inf
count, the power-of-two scaling and the input/dtype checks. ``method="auto"`` takes the Gram path and
falls back to the SVD for ill-conditioned matrices; NaN/Inf matrices get an all-NaN spectrum, never an
exception. Every matrix is first divided by the power of two nearest its largest entry (exact), so
entries anywhere in float64's range neither overflow the Gram nor underflow it.
Design notes: spectra/docs/svd-accuracy.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily: numpy inputs (the safetensors fast path) never load it
    import torch

__all__ = ["ScaledSpectrum", "count_nonfinite", "max_abs", "scaled_singular_values", "singular_values"]

Method = Literal["auto", "gram", "svd"]
DEFAULT_MIN_RCOND = 1e-5


@dataclass(frozen=True)
class ScaledSpectrum:
    """Singular values of ``W / 2**exponent`` (descending): the true ones are ``values * 2**exponent``.

    Kept apart so that spectra of matrices with entries near float64's limits stay representable:
    ratios (ranks, condition numbers, alpha) come from ``values``, norms are scaled back one by one.
    """

    values: np.ndarray
    exponent: int = 0

    def unscaled(self) -> np.ndarray:
        """The true singular values (inf/0 where they leave float64's range, which 1e-300..1e300 entries never do)."""
        with np.errstate(over="ignore", under="ignore"):
            return np.ldexp(self.values, self.exponent)


def max_abs(matrix: torch.Tensor | np.ndarray) -> float:
    """Largest |entry| of a matrix without a temporary the size of the matrix (0.0 when empty); NaN or
    inf when the matrix holds NaN/Inf (min and max propagate both)."""
    if matrix.size == 0 if isinstance(matrix, np.ndarray) else matrix.numel() == 0:
        return 0.0
    if isinstance(matrix, np.ndarray):
        return float(max(abs(matrix.min()), abs(matrix.max())))
    import torch

    lo, hi = torch.aminmax(matrix.detach())
    return float(max(abs(float(lo)), abs(float(hi))))


#: |log2 max entry| up to which W^T W cannot leave the compute dtype's range at the resolution that
#: matters (eps * sigma_max^2 stays a normal number, N * max^2 stays finite for any realistic N).
SAFE_EXPONENT = {8: 400, 4: 40}


def scale_exponent(largest: float, itemsize: int = 8) -> int:
    """The power of two e to divide a matrix by: ``largest / 2**e`` in [0.5, 1), or 0 (no scaling) when
    ``largest`` is within 2**+-SAFE_EXPONENT, where dividing by a power of two could not change a single
    bit of the result (it is exact, and nothing over- or underflows) and would only cost a copy."""
    if largest <= 0:
        return 0
    e = math.frexp(largest)[1]
    return 0 if abs(e) <= SAFE_EXPONENT.get(itemsize, 40) else e


def mul_pow2(x: Any, k: int) -> Any:
    """``x * 2**k`` exactly (numpy or torch, any k in float64's exponent range, no overflow on the way).

    Steps of at most 2**60 keep each factor finite even in float32; a step's product is exact as long as
    it does not underflow, and the intermediate values move monotonically towards the result.
    """
    if k == 0:
        return x
    if isinstance(x, np.ndarray):
        return np.ldexp(x, k)
    while k:
        step = max(-60, min(60, k))
        x = x * (2.0**step)
        k -= step
    return x


def count_nonfinite(matrix: torch.Tensor | np.ndarray) -> int:
    """Number of NaN or +-Inf entries in ``matrix`` (0 for a clean matrix); torch tensor or numpy array."""
    if isinstance(matrix, np.ndarray):
        return _count_nonfinite_np(matrix)
    import torch

    if not torch.is_floating_point(matrix) and not torch.is_complex(matrix):
        return 0
    # Fast path with no temporary the size of the matrix: any NaN/Inf makes the sum non-finite, so a finite
    # sum proves there are none; a non-finite sum (NaN/Inf, or mere overflow) falls through to counting.
    if bool(torch.isfinite(matrix.sum())):
        return 0
    flat = matrix.reshape(-1)
    step = max(1, GRAM_CHUNK_BYTES // max(1, flat.element_size()))
    return int(
        sum(int(flat[i : i + step].isfinite().logical_not().sum()) for i in range(0, flat.numel(), step))
    )


def _count_nonfinite_np(matrix: np.ndarray) -> int:
    """:func:`count_nonfinite` for numpy arrays (same finite-sum fast path, chunked count otherwise)."""
    if not (np.issubdtype(matrix.dtype, np.floating) or np.issubdtype(matrix.dtype, np.complexfloating)):
        return 0
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(matrix.sum()):
            return 0
    flat = matrix.reshape(-1)
    step = max(1, GRAM_CHUNK_BYTES // max(1, flat.itemsize))
    return int(sum(int((~np.isfinite(flat[i : i + step])).sum()) for i in range(0, flat.size, step)))


def _as_2d(matrix: torch.Tensor) -> torch.Tensor:
    import torch

    if not isinstance(matrix, torch.Tensor):
        matrix = torch.as_tensor(np.asarray(matrix))
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(matrix.shape)}")
    return matrix.detach()


#: Bytes of one up-cast slab in :func:`_gram_slabs`; bounds the working memory above the stored matrix.
GRAM_CHUNK_BYTES = 16 * 2**20


def _np_dtype(dtype: Any) -> np.dtype:
    """float64/float32 as a numpy dtype, from a torch dtype, numpy dtype or name."""
    name = str(dtype).removeprefix("torch.")
    if name not in ("float64", "float32"):
        raise ValueError(f"compute dtype must be float64 or float32, got {dtype!r}")
    return np.dtype(name)


def _gram_slabs(w: Any, itemsize: int, cast: Any, zeros: Any) -> Any:
    """The smaller Gram matrix of a 2-D array (numpy or torch), accumulated over slabs of the long side.

    ``cast`` up-casts one slab and ``zeros(n)`` makes the n x n accumulator. Casting slab by slab means
    a float32 embedding of 30k x 384 never exists as a whole float64 copy: peak memory is the stored
    matrix plus one slab plus the small Gram matrix.
    """
    tall = w.shape[0] >= w.shape[1]
    long_side, short_side = (w.shape[0], w.shape[1]) if tall else (w.shape[1], w.shape[0])
    step = max(1, GRAM_CHUNK_BYTES // max(1, short_side * itemsize))
    if step >= long_side:
        c = cast(w)
        return c.T @ c if tall else c @ c.T
    g = zeros(short_side)
    for i in range(0, long_side, step):
        c = cast(w[i : i + step] if tall else w[:, i : i + step])
        g += c.T @ c if tall else c @ c.T
    return g


def _cast_scaled(c: Any, dtype: Any, e: int) -> Any:
    """``c / 2**e`` in ``dtype`` (numpy or torch), scaled in the wider of the two dtypes so nothing
    overflows on the way down to float32; never modifies ``c``."""
    if isinstance(c, np.ndarray):
        if c.dtype.itemsize > dtype.itemsize:
            return mul_pow2(c, -e).astype(dtype)
        return mul_pow2(c.astype(dtype, copy=False), -e)
    if c.element_size() > _itemsize(dtype):
        return mul_pow2(c, -e).to(dtype)
    return mul_pow2(c.to(dtype), -e)


def _itemsize(dtype: Any) -> int:
    import torch

    return torch.empty((), dtype=dtype).element_size()


def _gram_np(w: np.ndarray, dtype: np.dtype, e: int = 0) -> np.ndarray:
    """:func:`_gram_slabs` of ``w / 2**e`` for numpy arrays (numpy/BLAS products)."""
    return _gram_slabs(
        w, dtype.itemsize, lambda c: _cast_scaled(c, dtype, e), lambda n: np.zeros((n, n), dtype)
    )


def _singular_values_np(w: np.ndarray, dtype: Any, method: str, min_rcond: float) -> ScaledSpectrum:
    """:func:`scaled_singular_values` on a 2-D numpy array without torch (numpy/LAPACK eigvalsh or SVD)."""
    dt = _np_dtype(dtype)
    k = min(w.shape)
    if k == 0:
        return ScaledSpectrum(np.zeros(0))
    largest = max_abs(w)  # min/max propagate NaN and show +-Inf: the same pass proves the matrix finite
    if not math.isfinite(largest):
        return ScaledSpectrum(np.full(k, np.nan))
    if largest == 0.0:
        return ScaledSpectrum(np.zeros(k))  # a zero matrix: its spectrum is exact without a decomposition
    e = scale_exponent(largest, dt.itemsize)
    if method == "svd":
        s = np.linalg.svd(_cast_scaled(w, dt, e), compute_uv=False)
    else:
        ev = np.linalg.eigvalsh(_gram_np(w, dt, e))  # ascending
        s = np.sqrt(np.maximum(ev, 0))[::-1]
        if method == "auto" and _needs_svd(s, min_rcond):
            s = np.linalg.svd(_cast_scaled(w, dt, e), compute_uv=False)
    return ScaledSpectrum(np.ascontiguousarray(s, dtype=np.float64), e)


def _gram(w: torch.Tensor, dtype: torch.dtype, e: int = 0) -> torch.Tensor:
    """:func:`_gram_slabs` of ``w / 2**e`` for a 2-D torch tensor (on its own device)."""
    import torch

    return _gram_slabs(
        w,
        _itemsize(dtype),
        lambda c: _cast_scaled(c, dtype, e),
        lambda n: torch.zeros(n, n, dtype=dtype, device=w.device),
    )


def _eig_to_sv(g: torch.Tensor) -> torch.Tensor:
    import torch

    ev = torch.linalg.eigvalsh(g)  # ascending
    return ev.clamp_min(0).sqrt().flip(-1)


def _check_method(method: str) -> None:
    if method not in ("auto", "gram", "svd"):
        raise ValueError(f"method must be 'auto', 'gram' or 'svd', got {method!r}")


def singular_values(
    matrix: torch.Tensor | np.ndarray,
    *,
    dtype: torch.dtype | str = "float64",
    method: Method = "auto",
    min_rcond: float = DEFAULT_MIN_RCOND,
) -> np.ndarray:
    """All min(N, M) singular values of ``matrix``, descending, as a float64 numpy array.

    Computed in ``dtype`` (float64 by default, see spectra/docs/svd-accuracy.md for the accuracy of each
    ``method``) on the matrix scaled by a power of two (:func:`scaled_singular_values`), then scaled back.
    A matrix with any NaN/Inf entry returns an all-NaN array instead of raising. A numpy array is
    decomposed with numpy/LAPACK and never imports torch (the safetensors fast path).
    """
    return scaled_singular_values(matrix, dtype=dtype, method=method, min_rcond=min_rcond).unscaled()


def scaled_singular_values(
    matrix: torch.Tensor | np.ndarray,
    *,
    dtype: torch.dtype | str = "float64",
    method: Method = "auto",
    min_rcond: float = DEFAULT_MIN_RCOND,
) -> ScaledSpectrum:
    """:func:`singular_values` of ``matrix / 2**e``, with e such that the largest |entry| lands in
    [0.5, 1) when it lies outside 2**+-400 (2**+-40 for float32; inside, e = 0: see :func:`scale_exponent`).

    Dividing by a power of two is exact, so the result is the same spectrum bit for bit wherever the
    unscaled computation did not overflow or underflow, and it stays right for entries near 1e-300 or
    1e300 (where W^T W leaves float64's range).
    """
    _check_method(method)
    if isinstance(matrix, np.ndarray):
        if matrix.ndim != 2:
            raise ValueError(f"expected a 2-D matrix, got shape {matrix.shape}")
        return _singular_values_np(matrix, dtype, method, min_rcond)
    import torch

    if isinstance(dtype, str):
        dtype = getattr(torch, _np_dtype(dtype).name)
    w = _as_2d(matrix)
    k = min(w.shape)
    if k == 0:
        return ScaledSpectrum(np.zeros(0))
    largest = max_abs(w)
    if not math.isfinite(largest):
        return ScaledSpectrum(np.full(k, np.nan))
    if largest == 0.0:
        return ScaledSpectrum(np.zeros(k))
    e = scale_exponent(largest, _itemsize(dtype))
    with torch.no_grad():
        if method == "svd":
            s = torch.linalg.svdvals(_cast_scaled(w, dtype, e))
        else:
            s = _eig_to_sv(_gram(w, dtype, e))
            if method == "auto" and _needs_svd(s, min_rcond):
                s = torch.linalg.svdvals(_cast_scaled(w, dtype, e))
    return ScaledSpectrum(s.double().cpu().numpy(), e)


def _needs_svd(s: torch.Tensor | np.ndarray, min_rcond: float) -> bool:
    """True when the Gram estimate of sigma_min / sigma_max (1-D, descending) is below ``min_rcond``."""
    smax = float(s[0])
    if smax == 0.0:
        return False  # zero matrix: the Gram path is exact
    return float(s[-1]) / smax < min_rcond
