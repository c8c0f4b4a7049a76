"""Data-parallel HVPs: operators whose matvec is the weighted mean over ranks of a local operator's.

Belongs here: the reducer (local weighted means -> the global one, one ``all_reduce`` per product),
the distributed operator wrappers and :func:`data_parallel_hessian`, which shards the batches.
Design notes: spectra/docs/distributed.md.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from hessian_spectra.errors import InputError
from hessian_spectra.parallel.process_group import (
    _collective,
    _comm_device,
    _gather_objects,
    _raise_failures,
    _rank_world,
    resolve_device,
)
from hessian_spectra.parallel.sharding import shard_batches
from torch import nn


class _Reducer:
    """Turns local weighted means into the global weighted mean: sum_r W_r m_r / sum_r W_r."""

    def __init__(self, local_weight: float, group: Any, reduce_dtype: torch.dtype, device: torch.device):
        self.group = group
        self.rank, self.world = _rank_world(group)
        self.local_weight = float(local_weight)
        if not math.isfinite(self.local_weight) or self.local_weight < 0:
            raise InputError(None, f"local weight must be finite and >= 0, got {local_weight}")
        self.reduce_dtype = reduce_dtype
        self.comm = _comm_device(group, device) if self.world > 1 else device
        if self.world > 1:
            t = torch.tensor([self.local_weight], dtype=torch.float64, device=self.comm)
            _collective(lambda: dist.all_reduce(t, group=group), "summing the batch weights", group)
            self.total_weight = float(t[0])
        else:
            self.total_weight = self.local_weight
        if self.total_weight <= 0:
            raise InputError(None, "the batch weights sum to zero over all ranks")

    def reduce(
        self,
        compute: Callable[[], list[torch.Tensor]],
        shapes: Sequence[tuple[int, ...]],
        like: torch.Tensor,
        what: str,
    ) -> list[torch.Tensor]:
        """``compute()`` gives this rank's local means (shaped ``shapes``); returns the global means."""
        error: BaseException | None = None
        local: list[torch.Tensor] = []
        if self.local_weight > 0:
            try:
                local = compute()
            except Exception as exc:  # shared with every rank below, then raised everywhere
                if self.world == 1:
                    raise
                error = exc
        if self.world == 1:
            return local
        sizes = [math.prod(s) for s in shapes]
        buf = torch.zeros(sum(sizes) + 1, dtype=self.reduce_dtype, device=self.comm)
        if error is None and self.local_weight > 0:
            at = 0
            for t, k in zip(local, sizes, strict=True):
                buf[at : at + k] = t.detach().reshape(-1).to(self.comm, self.reduce_dtype)
                at += k
            buf[:-1] *= self.local_weight
        buf[-1] = 0.0 if error is None else 1.0
        _collective(lambda: dist.all_reduce(buf, group=self.group), what, self.group)
        if float(buf[-1]) > 0:
            _raise_failures(what, error, self.group)
        buf = buf[:-1] / self.total_weight
        out, at = [], 0
        for s, k in zip(shapes, sizes, strict=True):
            out.append(buf[at : at + k].reshape(s).to(device=like.device, dtype=like.dtype))
            at += k
        return out


def _default_reduce_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class DistributedOperator:
    """A ``LinearOperator`` whose matvec is the weighted mean over ranks of a local operator's matvecs.

    ``local`` must return this rank's weighted MEAN (as HessianOperator, GGNOperator and their
    ``restrict`` do), ``local_weight`` its total weight (default ``local.total_weight``). Sums are done
    in ``reduce_dtype`` (float64 for float64 operators, else float32) whatever the operator dtype.
    """

    def __init__(
        self,
        local: Any,
        *,
        local_weight: float | None = None,
        group: Any = None,
        reduce_dtype: torch.dtype | None = None,
        _reducer: _Reducer | None = None,
    ):
        self.local = local
        self.dim = int(local.dim)
        self.dtype: torch.dtype = local.dtype
        self.device: torch.device = torch.device(local.device)
        self.group = group
        if _reducer is None:
            w = getattr(local, "total_weight", None) if local_weight is None else local_weight
            if w is None:
                raise InputError(None, "give local_weight: the local operator has no total_weight")
            _reducer = _Reducer(
                float(w), group, reduce_dtype or _default_reduce_dtype(self.dtype), self.device
            )
        self._reducer = _reducer
        self._check_same(self.dim, "operator dimension")
        self._like = torch.empty(0, dtype=self.dtype, device=self.device)  # dtype/device of results
        self._count = 0

    def _check_same(self, value: Any, what: str) -> None:
        if self._reducer.world == 1:
            return
        seen = _gather_objects(value, f"checking the {what}", self.group)
        if any(s != seen[0] for s in seen):
            raise InputError(
                None, f"ranks disagree on the {what}: {seen} (same model and params on every rank?)"
            )

    @property
    def rank(self) -> int:
        return self._reducer.rank

    @property
    def world_size(self) -> int:
        return self._reducer.world

    @property
    def total_weight(self) -> float:
        """Sum of the batch weights over all ranks."""
        return self._reducer.total_weight

    @property
    def num_matvecs(self) -> int:
        return self._count

    @property
    def num_hvps(self) -> int:
        return self._count

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """The global weighted-mean A v (identical on every rank)."""
        if not isinstance(v, torch.Tensor) or v.shape != (self.dim,):
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"expected a flat vector of shape ({self.dim},), got {shape}")
        (out,) = self._reducer.reduce(lambda: [self.local.matvec(v)], [(self.dim,)], self._like, "matvec")
        self._count += 1
        return out

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """The global A V for a ``(dim, k)`` matrix (one all-reduce for all columns)."""
        if not isinstance(V, torch.Tensor) or V.ndim != 2 or V.shape[0] != self.dim:
            shape = tuple(V.shape) if isinstance(V, torch.Tensor) else type(V).__name__
            raise ValueError(f"expected a matrix of shape ({self.dim}, k), got {shape}")
        local_mm = getattr(self.local, "matmat", None)

        def compute() -> list[torch.Tensor]:
            if callable(local_mm):
                return [local_mm(V)]
            return [torch.stack([self.local.matvec(V[:, j]) for j in range(V.shape[1])], dim=1)]

        (out,) = self._reducer.reduce(compute, [tuple(V.shape)], self._like, "matmat")
        self._count += int(V.shape[1])
        return out


class DistributedMultiOperator:
    """A ``MultiOperator`` (block-diagonal Hessian) reduced over ranks: one all-reduce per lockstep call."""

    def __init__(self, local: Any, reducer: _Reducer):
        self.local = local
        self.names = list(local.names)
        self.dims = [int(d) for d in local.dims]
        self.dtype: torch.dtype = local.dtype
        self.device: torch.device = torch.device(local.device)
        self.blocks = getattr(local, "blocks", None)
        self._reducer = reducer
        self._count = 0

    @property
    def num_matvecs(self) -> int:
        return self._count

    def matvec_many(self, vs: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
        if len(vs) != len(self.dims):
            raise ValueError(f"expected {len(self.dims)} vectors, got {len(vs)}")
        live = [i for i, v in enumerate(vs) if v is not None]
        out: list[torch.Tensor | None] = [None] * len(vs)
        if not live:
            self._count += 1
            return out

        def compute() -> list[torch.Tensor]:
            res = self.local.matvec_many(vs)
            return [res[i] for i in live]  # type: ignore[misc]

        like = torch.empty(0, dtype=self.dtype, device=self.device)
        reduced = self._reducer.reduce(compute, [(self.dims[i],) for i in live], like, "block matvec")
        for i, t in zip(live, reduced, strict=True):
            out[i] = t
        self._count += 1
        return out


class DistributedHessianOperator(DistributedOperator):
    """Data-parallel Hessian: ``op_local`` is a HessianOperator (or GGNOperator) on this rank's batches.

    ``matvec``/``matmat`` equal the single-process operator on all batches (weighted mean, same
    weighting rule) up to floating-point summation order; ``restrict``, ``block_diagonal``,
    ``gradient`` and ``loss_value`` are reduced the same way, so every algorithm runs unchanged.
    """

    def __init__(self, op_local: Any, group: Any = None, *, reduce_dtype: torch.dtype | None = None):
        super().__init__(op_local, group=group, reduce_dtype=reduce_dtype)
        self.param_names: list[str] = list(op_local.param_names)
        self.param_shapes: dict[str, tuple[int, ...]] = dict(op_local.param_shapes)
        self._check_same([self.param_names, [list(s) for s in self.param_shapes.values()]], "parameters")
        self._check_same(getattr(op_local, "weighting", None), "weighting rule")
        self.weighting = getattr(op_local, "weighting", None)
        n_local = int(getattr(op_local, "num_batches", 0))
        counts = _gather_objects(n_local, "counting batches", group) if self.world_size > 1 else [n_local]
        self.batches_per_rank: tuple[int, ...] = tuple(int(c) for c in counts)

    @property
    def notes(self) -> list[str]:
        return list(getattr(self.local, "notes", []))

    @property
    def num_batches(self) -> int:
        return sum(self.batches_per_rank)

    @property
    def mode(self) -> str:
        return self.local.mode

    def split(self, v: torch.Tensor) -> list[torch.Tensor]:
        return self.local.split(v)

    def flatten(self, parts: Sequence[torch.Tensor | None]) -> torch.Tensor:
        return self.local.flatten(parts)

    def param_slice(self, name: str) -> slice:
        return self.local.param_slice(name)

    def take(self, block: Any, v: torch.Tensor) -> torch.Tensor:
        return self.local.take(block, v)

    def embed(self, block: Any, vb: torch.Tensor) -> torch.Tensor:
        return self.local.embed(block, vb)

    def parameters_vector(self) -> torch.Tensor:
        return self.local.parameters_vector()

    def gradient(self) -> torch.Tensor:
        """Flat gradient of the global weighted mean loss."""
        like = torch.empty(0, dtype=self.dtype, device=self.device)
        (g,) = self._reducer.reduce(lambda: [self.local.gradient()], [(self.dim,)], like, "gradient")
        return g

    @property
    def loss_value(self) -> float:
        """The global weighted mean loss."""
        like = torch.empty(0, dtype=torch.float64)
        (v,) = self._reducer.reduce(
            lambda: [torch.tensor([float(self.local.loss_value)], dtype=torch.float64)], [(1,)], like, "loss"
        )
        return float(v[0])

    def restrict(self, block: Any) -> DistributedOperator:
        """The diagonal block H_bb over all ranks' data."""
        return DistributedOperator(self.local.restrict(block), group=self.group, _reducer=self._reducer)

    def block_diagonal(self, blocks: Sequence[Any] | None = None) -> DistributedMultiOperator:
        """The block-diagonal operator over ``blocks`` (default: one per parameter) over all ranks' data."""
        return DistributedMultiOperator(self.local.block_diagonal(blocks), self._reducer)


def data_parallel_hessian(
    model: nn.Module,
    batches: Sequence[Any],
    loss: Any = None,
    *,
    device: str | torch.device = "auto",
    group: Any = None,
    weighting: str | Sequence[float] = "auto",
    reduce_dtype: torch.dtype | None = None,
    **op_kwargs: Any,
) -> DistributedHessianOperator:
    """Shard ``batches`` (ALL of them, the same list on every rank) round-robin, build this rank's
    HessianOperator on ``device`` and wrap it. The user's model is copied only when it must move device.

    Explicit per-batch ``weighting`` numbers are sharded with the batches.
    """
    from hessian_spectra.curvature.hessian import HessianOperator

    rank, world = _rank_world(group)
    dev = resolve_device(device)
    if isinstance(weighting, str):
        mine, w_mine = shard_batches(batches, rank, world), weighting
    else:
        mine, w_mine = shard_batches(batches, rank, world, weights=weighting)  # type: ignore[misc]
    first = next(iter(model.parameters()), None)
    if first is not None and first.device != dev:
        model = copy.deepcopy(model).to(dev)
    op = HessianOperator(model, mine, loss, weighting=w_mine, **op_kwargs)
    return DistributedHessianOperator(op, group, reduce_dtype=reduce_dtype)


__all__ = [
    "DistributedOperator",
    "DistributedMultiOperator",
    "DistributedHessianOperator",
    "data_parallel_hessian",
]
