"""Exact singular values of one weight matrix: float64 SVD or slab-wise Gram + eigvalsh, numpy or torch.

Also home of what the batched (``svd_batched``) and partial (``svd_partial``) paths share: the NaN/Inf
count and the input/dtype checks. ``method="auto"`` takes the Gram path and falls back to the SVD for
ill-conditioned matrices; NaN/Inf matrices get an all-NaN spectrum, never an exception.
Design notes: spectra/docs/svd-accuracy.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily: numpy inputs (the safetensors fast path) never load it
    import torch

__all__ = ["count_nonfinite", "singular_values"]

Method = Literal["auto", "gram", "svd"]
DEFAULT_MIN_RCOND = 1e-5


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


def _gram_np(w: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """:func:`_gram_slabs` for numpy arrays (numpy/BLAS products)."""
    return _gram_slabs(
        w, dtype.itemsize, lambda c: c.astype(dtype, copy=False), lambda n: np.zeros((n, n), dtype)
    )


def _singular_values_np(w: np.ndarray, dtype: Any, method: str, min_rcond: float) -> np.ndarray:
    """:func:`singular_values` on a 2-D numpy array without torch (numpy/LAPACK eigvalsh or SVD)."""
    dt = _np_dtype(dtype)
    k = min(w.shape)
    if k == 0:
        return np.zeros(0)
    if _count_nonfinite_np(w):
        return np.full(k, np.nan)
    if method == "svd":
        s = np.linalg.svd(w.astype(dt, copy=False), compute_uv=False)
    else:
        ev = np.linalg.eigvalsh(_gram_np(w, dt))  # ascending
        s = np.sqrt(np.maximum(ev, 0))[::-1]
        if method == "auto" and _needs_svd(s, min_rcond):
            s = np.linalg.svd(w.astype(dt, copy=False), compute_uv=False)
    return np.ascontiguousarray(s, dtype=np.float64)


def _gram(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """:func:`_gram_slabs` for a 2-D torch tensor (on its own device)."""
    import torch

    itemsize = torch.empty((), dtype=dtype).element_size()
    return _gram_slabs(
        w, itemsize, lambda c: c.to(dtype), lambda n: torch.zeros(n, n, dtype=dtype, device=w.device)
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
    ``method``). A matrix with any NaN/Inf entry returns an all-NaN array instead of raising. A numpy
    array is decomposed with numpy/LAPACK and never imports torch (the safetensors fast path).
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
        return np.zeros(0)
    if count_nonfinite(w):
        return np.full(k, np.nan)
    with torch.no_grad():
        if method == "svd":
            s = torch.linalg.svdvals(w.to(dtype))
        else:
            s = _eig_to_sv(_gram(w, dtype))
            if method == "auto" and _needs_svd(s, min_rcond):
                s = torch.linalg.svdvals(w.to(dtype))
    return s.double().cpu().numpy()


def _needs_svd(s: torch.Tensor | np.ndarray, min_rcond: float) -> bool:
    """True when the Gram estimate of sigma_min / sigma_max (1-D, descending) is below ``min_rcond``."""
    smax = float(s[0])
    if smax == 0.0:
        return False  # zero matrix: the Gram path is exact
    return float(s[-1]) / smax < min_rcond
