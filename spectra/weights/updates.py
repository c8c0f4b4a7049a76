"""Update spectra between two checkpoints: the singular values of dW = W_after - W_before per matrix.

Both checkpoints are read one tensor at a time (two tensors and their float64 difference in memory,
never a whole model); every tensor becomes matrices by the weights probe's own rules
(:mod:`hessian_spectra.checkpoints.matrices`: conv kernels flattened, GPT-2 ``Conv1D`` transposed, fused
QKV analysed whole and split), so update and weight matrices carry the same names. The difference is
formed in float64 (exact for float32/bf16/fp16 weights) and decomposed by
:func:`hessian_spectra.weights.svd.singular_values` in float64; matrices above the weights probe's
``full_max_elements`` get the top-``topk`` values only. With a decoupled weight decay, ``decay`` =
sum_s lr_s * lambda over the interval also gives sigma_max(dW + decay * W_before): the optimizer's
own steps with the decay's shrinkage removed (to first order in lr * lambda).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hessian_spectra.checkpoints.matrices import extract_matrices
from hessian_spectra.checkpoints.reader import open_checkpoint
from hessian_spectra.weights.plan import WeightsSettings, _spectrum_plan, plan_inventory
from hessian_spectra.weights.svd import count_nonfinite, singular_values
from hessian_spectra.weights.svd_partial import partial_singular_values

__all__ = ["MatrixUpdate", "UpdateReport", "update_spectra"]

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class MatrixUpdate:
    """The update of one matrix between two checkpoints.

    ``singular_values`` of dW (float64, descending; the top-k only when ``status == "partial"``; empty
    when ``"nonfinite"``); ``weight_sigma_max`` = ||W_before||_2; ``decayed_sigma_max`` =
    sigma_max(dW + decay W_before) when a decay was given.
    """

    name: str
    tensor_name: str
    kind: str
    role: str
    shape: tuple[int, int]
    status: str  # "ok" | "partial" | "nonfinite"
    singular_values: np.ndarray = field(repr=False, compare=False)
    frobenius: float
    weight_sigma_max: float | None
    decayed_sigma_max: float | None = None
    note: str = ""

    @property
    def sigma_max(self) -> float | None:
        """||dW||_2."""
        return float(self.singular_values[0]) if self.singular_values.size else None

    @property
    def stable_rank(self) -> float | None:
        """||dW||_F^2 / ||dW||_2^2 (needs only the top value and the Frobenius norm)."""
        s = self.sigma_max
        return None if not s else self.frobenius**2 / s**2

    @property
    def update_ratio(self) -> float | None:
        """||dW||_2 / ||W_before||_2, the update-to-weight spectral ratio."""
        s, w = self.sigma_max, self.weight_sigma_max
        return None if s is None or not w else s / w

    def to_dict(self, max_values: int | None = None) -> dict[str, Any]:
        sv = self.singular_values if max_values is None else self.singular_values[:max_values]
        return {
            "name": self.name, "tensor_name": self.tensor_name, "kind": self.kind, "role": self.role,
            "shape": list(self.shape), "status": self.status, "sigma_max": self.sigma_max,
            "frobenius": self.frobenius, "stable_rank": self.stable_rank, "weight_sigma_max": self.weight_sigma_max,
            "update_ratio": self.update_ratio, "decayed_sigma_max": self.decayed_sigma_max, "note": self.note,
            "singular_values": [float(x) for x in sv], "n_singular_values": int(self.singular_values.size),
        }  # fmt: skip


@dataclass(frozen=True)
class UpdateReport:
    """Per-matrix updates from ``before`` to ``after``; ``skipped`` lists tensors with no counterpart."""

    before: str
    after: str
    matrices: tuple[MatrixUpdate, ...]
    skipped: tuple[tuple[str, str], ...]
    seconds: float

    def by_name(self) -> dict[str, MatrixUpdate]:
        return {m.name: m for m in self.matrices}


def _load(ckpt: Any, name: str, use_numpy: bool) -> Any:
    return ckpt.load_numpy(name) if use_numpy else ckpt.load(name)


def _difference(after: Any, before: Any) -> Any:
    """after - before in float64 (numpy, or torch on the CPU)."""
    if isinstance(after, np.ndarray) and isinstance(before, np.ndarray):
        return np.subtract(after, before, dtype=np.float64)
    import torch

    a = torch.as_tensor(after).detach().to("cpu", torch.float64)
    b = torch.as_tensor(before).detach().to("cpu", torch.float64)
    return a - b


def _sigma_max(matrix: Any, settings: WeightsSettings) -> float:
    """||matrix||_2 in float64: the top eigenvalue of the fp64 Gram matrix (accurate to ~eps relative for
    the LARGEST singular value, so no SVD fallback is needed), ARPACK top-1 for huge matrices."""
    shape = (int(matrix.shape[0]), int(matrix.shape[1]))
    if _spectrum_plan(shape, settings)[0] is not None:
        return float(partial_singular_values(matrix, 1, which="top", seed=settings.seed).top[0])
    return float(singular_values(matrix, dtype="float64", method="gram")[0])


def _decayed(dw: Any, w_old: Any, decay: float) -> Any:
    """dW + decay * W_before in float64, with one matrix-sized temporary."""
    if isinstance(w_old, np.ndarray):
        out = np.multiply(w_old, decay, dtype=np.float64)
    else:
        out = w_old.detach().to("cpu", dtype=dw.dtype) * decay
    out += dw
    return out


def _frobenius(matrix: Any) -> float:
    if isinstance(matrix, np.ndarray):
        return float(np.linalg.norm(matrix))
    return float(matrix.norm())


def update_spectra(
    before: str | Path,
    after: str | Path,
    settings: WeightsSettings | None = None,
    *,
    weight_norms: Mapping[str, float] | None = None,
    decay: float = 0.0,
    progress: Progress | None = None,
) -> UpdateReport:
    """Singular values of W_after - W_before for every matrix the weights probe would analyse in
    ``after`` (``settings``: the same ``layers`` selection, extraction rules and size limits).

    ``weight_norms`` (matrix name -> ||W_before||_2, e.g. from the weights report of ``before``) saves
    recomputing them. A tensor missing from ``before`` or with another shape is listed in ``skipped``.
    """
    settings = settings or WeightsSettings()
    if not (math.isfinite(decay) and decay >= 0.0):
        raise ValueError(f"decay must be a finite number >= 0, got {decay}")
    started = time.perf_counter()
    out: list[MatrixUpdate] = []
    skipped: list[tuple[str, str]] = []
    with open_checkpoint(before) as old, open_checkpoint(after) as new:
        use_numpy = old.torch_free and new.torch_free
        old_names = set(old.names())
        todo = [r for r in plan_inventory(new, settings) if r.analysed]
        for i, record in enumerate(todo):
            if progress is not None:
                progress(i, len(todo), record.name)
            if record.name not in old_names:
                skipped.append((record.name, "not in the earlier checkpoint"))
                continue
            if tuple(old.meta(record.name).shape) != record.shape:
                skipped.append((record.name, f"shape changed from {tuple(old.meta(record.name).shape)}"))
                continue
            views_new = extract_matrices(record, _load(new, record.name, use_numpy))
            views_old = {v.name: v for v in extract_matrices(record, _load(old, record.name, use_numpy))}
            for view in views_new:
                w_old = views_old[view.name].matrix
                out.append(_one(view, w_old, settings, weight_norms, decay))
            del views_new, views_old
        if progress is not None:
            progress(len(todo), len(todo), "")
        sources = (old.source, new.source)
    return UpdateReport(sources[0], sources[1], tuple(out), tuple(skipped), time.perf_counter() - started)


def _one(view: Any, w_old: Any, settings: WeightsSettings, norms: Mapping[str, float] | None, decay: float):
    """The MatrixUpdate of one matrix view (``view.matrix`` is W_after)."""
    shape = (int(view.matrix.shape[0]), int(view.matrix.shape[1]))
    dw = _difference(view.matrix, w_old)
    head = (view.name, view.tensor_name, view.kind, view.role, shape)
    bad = count_nonfinite(dw)
    if bad:
        return MatrixUpdate(
            *head, "nonfinite", np.zeros(0), math.nan, None, None, f"{bad} NaN/Inf entries in dW"
        )
    k, _, note = _spectrum_plan(shape, settings)
    if k is not None:
        sv = np.asarray(partial_singular_values(dw, k, which="top", seed=settings.seed).top, dtype=np.float64)
        status = "partial"
    else:
        sv, status = singular_values(dw, dtype="float64"), "ok"
    w_norm = None if norms is None else norms.get(view.name)
    if w_norm is None and not count_nonfinite(w_old):
        w_norm = _sigma_max(w_old, settings)
    frob = _frobenius(dw)
    decayed = None
    if decay > 0.0:
        corrected = _decayed(dw, w_old, decay)
        del dw
        decayed = _sigma_max(corrected, settings)
    return MatrixUpdate(*head, status, sv, frob, w_norm, decayed, note)
