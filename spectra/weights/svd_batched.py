"""Singular values of many matrices: same-shape matrices stacked into one batched call (the device path).

Same values and accuracy as :func:`hessian_spectra.weights.svd.singular_values`, which it falls back to
one matrix at a time; batching pays off on a GPU, not on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from hessian_spectra.weights.svd import (
    DEFAULT_MIN_RCOND,
    Method,
    ScaledSpectrum,
    _as_2d,
    _cast_scaled,
    _check_method,
    _eig_to_sv,
    _needs_svd,
    _np_dtype,
    count_nonfinite,
    max_abs,
    scale_exponent,
    scaled_singular_values,
)

if TYPE_CHECKING:
    import torch

__all__ = ["scaled_singular_values_batched", "singular_values_batched"]


def _gram_sv(w: torch.Tensor) -> torch.Tensor:
    """Descending singular values of a (batch of) matrices from the smaller Gram matrix; w already cast."""
    n, m = w.shape[-2], w.shape[-1]
    g = w.mT @ w if n >= m else w @ w.mT
    return _eig_to_sv(g)


def singular_values_batched(
    matrices: Sequence[torch.Tensor],
    *,
    dtype: torch.dtype | str = "float64",
    method: Method = "auto",
    min_rcond: float = DEFAULT_MIN_RCOND,
    batch: bool | None = None,
) -> list[np.ndarray]:
    """Singular values of many matrices, in input order; same values and accuracy as
    :func:`hessian_spectra.weights.svd.singular_values` (see :func:`scaled_singular_values_batched`)."""
    return [
        s.unscaled()
        for s in scaled_singular_values_batched(
            matrices, dtype=dtype, method=method, min_rcond=min_rcond, batch=batch
        )
    ]


def scaled_singular_values_batched(
    matrices: Sequence[torch.Tensor],
    *,
    dtype: torch.dtype | str = "float64",
    method: Method = "auto",
    min_rcond: float = DEFAULT_MIN_RCOND,
    batch: bool | None = None,
) -> list[ScaledSpectrum]:
    """:func:`hessian_spectra.weights.svd.scaled_singular_values` of many matrices, in input order.

    With ``batch=True`` same-(oriented)-shape matrices are stacked (each divided by its own power of two)
    and decomposed in one batched Gram/eigvalsh (or svdvals) call per shape; under ``"auto"`` any matrix
    whose Gram estimate is ill-conditioned is redone alone with the SVD. ``batch=None`` batches only
    off-CPU: on CPU (2 cores, MiniLM's 39 matrices, 1 thread) batching measured 1.41 s vs 1.16-1.27 s
    one by one, since LAPACK loops over the batch anyway and stacking costs a copy.
    """
    import torch

    _check_method(method)
    if isinstance(dtype, str):
        dtype = getattr(torch, _np_dtype(dtype).name)
    mats = [_as_2d(m) for m in matrices]
    if batch is None:
        batch = any(m.device.type != "cpu" for m in mats)
    if not batch:
        return [scaled_singular_values(m, dtype=dtype, method=method, min_rcond=min_rcond) for m in mats]
    out: list[ScaledSpectrum] = [ScaledSpectrum(np.zeros(0))] * len(mats)
    groups: dict[tuple[int, int, torch.device], list[int]] = {}
    exps: dict[int, int] = {}
    for i, w in enumerate(mats):
        k = min(w.shape)
        if k == 0:
            out[i] = ScaledSpectrum(np.zeros(0))
        elif count_nonfinite(w):
            out[i] = ScaledSpectrum(np.full(k, np.nan))
        elif (largest := max_abs(w)) == 0.0:
            out[i] = ScaledSpectrum(np.zeros(k))
        else:
            exps[i] = scale_exponent(largest, dtype.itemsize)
            groups.setdefault((max(w.shape), k, w.device), []).append(i)
    with torch.no_grad():
        for idx in groups.values():
            oriented = [mats[i] if mats[i].shape[0] >= mats[i].shape[1] else mats[i].mT for i in idx]
            stack = torch.stack([_cast_scaled(w, dtype, exps[i]) for w, i in zip(oriented, idx, strict=True)])
            s = torch.linalg.svdvals(stack) if method == "svd" else _gram_sv(stack)
            for j, i in enumerate(idx):
                sj = s[j]
                if method == "auto" and _needs_svd(sj, min_rcond):
                    sj = torch.linalg.svdvals(stack[j])
                out[i] = ScaledSpectrum(sj.double().cpu().numpy(), exps[i])
    return out
