"""What the advice engine reads: one MatrixInput per weight matrix (name, role, shape, singular values), from
a tensor or from a weights report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from hessian_spectra.errors import InputError


@dataclass(frozen=True)
class MatrixInput:
    """One weight matrix as the recommendation engine sees it."""

    name: str
    role: str
    shape: tuple[int, int]
    singular_values: np.ndarray = field(repr=False, compare=False)

    @classmethod
    def from_tensor(cls, name: str, tensor: torch.Tensor, role: str | None = None) -> MatrixInput:
        """Singular values in float64 via :func:`hessian_spectra.weights.svd.singular_values`; role from the name if not given."""
        from hessian_spectra.weights.roles import tensor_role
        from hessian_spectra.weights.svd import singular_values

        if tensor.ndim != 2:
            raise InputError(None, f"{name}: expected a 2-D matrix, got shape {tuple(tensor.shape)}")
        role = tensor_role(name) if role is None else role
        return cls(name, role, (int(tensor.shape[0]), int(tensor.shape[1])), singular_values(tensor))


def inputs_from_weights_report(report: Any) -> list[MatrixInput]:
    """MatrixInputs from a :class:`hessian_spectra.weights.results.WeightsReport` (matrices with a full, finite spectrum)."""
    out = []
    for m in report.matrices:
        s = getattr(m, "singular_values", None)
        if m.status != "ok" or s is None or not np.all(np.isfinite(s)):
            continue
        out.append(MatrixInput(m.name, m.role, tuple(m.shape), np.asarray(s, dtype=np.float64)))
    return out
