"""The two operator protocols every Krylov routine is written against, plus dense test doubles.

* :class:`LinearOperator`: one symmetric operator on flat 1-D tensors (a Hessian, a GGN, a block).
* :class:`MultiOperator`: several independent symmetric operators (the blocks of a block-diagonal
  Hessian) whose matvecs are cheapest when done together, so chains advance in lockstep.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class LinearOperator(Protocol):
    """A symmetric linear map on flat vectors of length ``dim``."""

    dim: int
    dtype: torch.dtype
    device: torch.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """Return A v for a flat ``(dim,)`` tensor ``v``."""
        ...

    @property
    def num_matvecs(self) -> int:
        """How many matvecs (HVPs) this operator has computed so far."""
        ...


@runtime_checkable
class MultiOperator(Protocol):
    """Independent symmetric operators A_b of sizes ``dims[b]`` applied together.

    ``matvec_many(vs)`` takes one vector per operator (``None`` for an operator whose chain is done)
    and returns A_b v_b in the same positions (``None`` where the input was ``None``).
    """

    names: Sequence[str]
    dims: Sequence[int]
    dtype: torch.dtype
    device: torch.device

    def matvec_many(self, vs: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]: ...

    @property
    def num_matvecs(self) -> int: ...


class DenseOperator:
    """A dense symmetric matrix as a :class:`LinearOperator` (exact oracle and tests)."""

    def __init__(self, matrix: torch.Tensor):
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"DenseOperator needs a square matrix, got shape {tuple(matrix.shape)}")
        self.matrix = matrix
        self.dim = int(matrix.shape[0])
        self.dtype = matrix.dtype
        self.device = matrix.device
        self._count = 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self._count += 1
        return self.matrix @ v.to(self.dtype)

    @property
    def num_matvecs(self) -> int:
        return self._count


class DenseBlockOperator:
    """Several dense symmetric matrices as a :class:`MultiOperator` (exact oracle and tests)."""

    def __init__(self, matrices: Sequence[torch.Tensor], names: Sequence[str] | None = None):
        self.ops = [DenseOperator(m) for m in matrices]
        self.names = list(names) if names is not None else [f"block{i}" for i in range(len(matrices))]
        self.dims = [op.dim for op in self.ops]
        self.dtype = matrices[0].dtype
        self.device = matrices[0].device
        self._count = 0

    def matvec_many(self, vs: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
        if len(vs) != len(self.ops):
            raise ValueError(f"expected {len(self.ops)} vectors, got {len(vs)}")
        self._count += 1
        return [None if v is None else op.matvec(v) for op, v in zip(self.ops, vs, strict=True)]

    @property
    def num_matvecs(self) -> int:
        """One lockstep call counts as one (it costs about one graph build in the real operator)."""
        return self._count
