"""Scale-out with ``torch.distributed`` (launch with ``torchrun``; gloo on CPU, NCCL on GPU).

Three ways to spread the work, all giving the single-process numbers:

* **Data-parallel HVPs** (:class:`DistributedHessianOperator`): every rank builds a local
  :class:`~hessian_spectra.curvature.operators.HessianOperator` on its shard of the batches (:func:`shard_batches`); a
  matvec is the local weighted mean times the local weight, summed over ranks by one ``all_reduce`` and
  divided by the global weight, i.e. exactly the single-process weighted mean up to summation order.
  Lanczos, SLQ, Hutchinson and block-lockstep runs are then unchanged: every rank draws the same seeded
  vectors and receives the same reduced ``H v``, so every rank computes the same result.
* **Block-parallel block spectra** (:func:`block_spectra`): blocks are assigned to ranks by estimated
  cost (:func:`assign_by_cost`); each rank runs lockstep SLQ/Lanczos on its blocks with their GLOBAL
  block indices as seeds (so block ``b`` draws the probes it would draw alone) and results are gathered.
* **Matrix-parallel weight probes** (:func:`analyze_weights_distributed`): each rank reads and
  decomposes a cost-balanced subset of the tensors; the gathered report equals
  :func:`hessian_spectra.weights.probe.analyze_weights` (same matrices, same order), provenance aside.

Failures: every collective carries an error flag, so an exception on one rank becomes a
:class:`RankFailure` naming that rank and its message on every rank at the next collective; a rank that
dies or hangs makes the others fail with :class:`CollectiveError` after the process-group timeout
(``init_distributed(timeout_s=...)``) instead of hanging. Only rank 0 should write files
(:func:`is_main_process`).

Without an initialised process group everything here runs as a single process (world size 1).
"""

from __future__ import annotations

import copy
import heapq
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from hessian_spectra.errors import InputError, SpectraError
from torch import nn

__all__ = [
    "DistInfo",
    "RankFailure",
    "CollectiveError",
    "resolve_device",
    "init_distributed",
    "shutdown_distributed",
    "dist_info",
    "is_main_process",
    "shard_indices",
    "shard_batches",
    "check_all_ok",
    "DistributedOperator",
    "DistributedMultiOperator",
    "DistributedHessianOperator",
    "data_parallel_hessian",
    "BlockAssignment",
    "estimate_block_costs",
    "measure_block_costs",
    "assign_by_cost",
    "block_spectra",
    "analyze_weights_distributed",
]

DEFAULT_TIMEOUT_S = 300.0


# ====================================================================== process group and devices
class RankFailure(SpectraError):
    """One or more ranks raised: ``failures`` maps rank -> one-line message (raised on every rank)."""

    def __init__(self, what: str, failures: dict[int, str]):
        self.what = what
        self.failures = dict(sorted(failures.items()))
        detail = "; ".join(f"rank {r}: {m}" for r, m in self.failures.items())
        super().__init__(f"{what} failed on {len(self.failures)} rank(s): {detail}")


class CollectiveError(SpectraError):
    """A collective did not complete: another rank crashed, hangs or lost its connection."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, world size, local rank, backend (None: single process), device."""

    rank: int
    world_size: int
    local_rank: int
    backend: str | None
    device: str
    timeout_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """:func:`hessian_spectra.parallel.devices.resolve_device` as a ``torch.device`` (``auto``/``cuda``: ``cuda:LOCAL_RANK``
    under torchrun, missing CUDA an InputError); other torch device types are taken as they are."""
    from hessian_spectra.parallel.devices import parse_device
    from hessian_spectra.parallel.devices import resolve_device as resolve

    spec = str(device)
    try:
        parse_device(spec, "device")
    except InputError:
        try:
            return torch.device(spec)
        except RuntimeError as exc:
            raise InputError(None, f"unknown device {spec!r}: {exc}") from None
    return torch.device(resolve(spec, "device"))


def init_distributed(
    backend: str = "auto", *, device: str | torch.device = "auto", timeout_s: float = DEFAULT_TIMEOUT_S
) -> DistInfo:
    """Join the process group torchrun describes (``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` in the
    environment); a no-op returning world size 1 when not launched that way.

    ``backend="auto"``: NCCL when the device is CUDA, else gloo. ``timeout_s`` bounds every collective,
    so a dead or hung rank turns into an error on the others instead of a hang.
    """
    if not dist.is_available():
        raise SpectraError("torch.distributed is not available in this PyTorch build")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if dist.is_initialized():
        return dist_info(device=dev)
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistInfo(0, 1, local_rank, None, str(dev), None)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend not in ("gloo", "nccl"):
        raise InputError(None, f"backend must be auto, gloo or nccl, got {backend!r}")
    if backend == "nccl" and dev.type != "cuda":
        raise InputError(None, "the NCCL backend needs CUDA devices; use gloo on CPU")
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=float(timeout_s)))
    except Exception as exc:  # rendezvous failures: wrong port, missing peers
        raise CollectiveError(f"could not join the process group ({backend}): {_one_line(exc)}") from exc
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, backend, str(dev), float(timeout_s))


def shutdown_distributed() -> None:
    """Leave the process group if this process is in one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _rank_world(group: Any = None) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def dist_info(group: Any = None, device: str | torch.device | None = None) -> DistInfo:
    """Rank, world size and backend of ``group`` (the default group; world size 1 when none)."""
    rank, world = _rank_world(group)
    backend = dist.get_backend(group) if dist.is_available() and dist.is_initialized() else None
    dev = str(device) if device is not None else ("cuda" if backend == "nccl" else "cpu")
    return DistInfo(rank, world, int(os.environ.get("LOCAL_RANK", "0")), backend, dev, None)


def is_main_process(group: Any = None) -> bool:
    """True on rank 0 (and in a single process): the one rank that writes reports."""
    return _rank_world(group)[0] == 0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:500]}" if text else type(exc).__name__


def _comm_device(group: Any, fallback: torch.device) -> torch.device:
    """NCCL reduces CUDA tensors; gloo reduces CPU tensors."""
    if dist.get_backend(group) == "nccl":
        return fallback if fallback.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _collective(fn: Callable[[], Any], what: str, group: Any) -> Any:
    """Run a collective; turn a timeout or a lost peer into a CollectiveError that says what happened."""
    try:
        return fn()
    except (RuntimeError, dist.DistError) as exc:
        rank = dist.get_rank(group)
        raise CollectiveError(
            f"rank {rank}: {what}: a collective did not complete ({_one_line(exc)}); another rank "
            "probably crashed, hangs or ran out of memory (see its log)"
        ) from exc


def _gather_objects(obj: Any, what: str, group: Any) -> list[Any]:
    world = dist.get_world_size(group)
    out: list[Any] = [None] * world
    _collective(lambda: dist.all_gather_object(out, obj, group=group), what, group)
    return out


def _raise_failures(what: str, error: BaseException | None, group: Any) -> None:
    """Everyone saw a nonzero error flag: share the messages and raise the same RankFailure everywhere."""
    msgs = _gather_objects(None if error is None else _one_line(error), f"{what} (error report)", group)
    failures = {r: m for r, m in enumerate(msgs) if m is not None}
    raise RankFailure(what, failures) from error


def check_all_ok(error: BaseException | None = None, what: str = "step", group: Any = None) -> None:
    """A barrier that also agrees on failure: if any rank passes an ``error``, every rank raises the same
    :class:`RankFailure`. Use it around local work that has no collective of its own."""
    rank, world = _rank_world(group)
    if world == 1:
        if error is not None:
            raise RankFailure(what, {0: _one_line(error)}) from error
        return
    flag = torch.tensor([0.0 if error is None else 1.0], dtype=torch.float64)
    flag = flag.to(_comm_device(group, torch.device("cpu")))
    _collective(lambda: dist.all_reduce(flag, group=group), what, group)
    if float(flag[0]) > 0:
        _raise_failures(what, error, group)


# ====================================================================== sharding the data
def shard_indices(n: int, rank: int, world: int, costs: Sequence[float] | None = None) -> list[int]:
    """Indices of ``n`` items this rank owns: round-robin, or balanced by ``costs`` (:func:`assign_by_cost`)."""
    if world < 1 or not 0 <= rank < world:
        raise InputError(None, f"rank {rank} is not in a world of size {world}")
    if costs is None:
        return list(range(rank, n, world))
    owners = assign_by_cost(costs, world).owners
    return [i for i in range(n) if owners[i] == rank]


def shard_batches(
    batches: Sequence[Any],
    rank: int | None = None,
    world: int | None = None,
    *,
    weights: Sequence[float] | None = None,
) -> list[Any] | tuple[list[Any], list[float]]:
    """This rank's batches (round-robin; default rank/world from the process group).

    With explicit per-batch ``weights`` returns ``(batches, weights)`` sharded alike. Every rank needs
    at least one batch: fewer batches than ranks is an InputError (split the data finer).
    """
    if rank is None or world is None:
        r, w = _rank_world()
        rank = r if rank is None else rank
        world = w if world is None else world
    items = list(batches)
    if len(items) < world:
        raise InputError(
            None, f"{len(items)} batch(es) for {world} ranks: every rank needs at least one batch"
        )
    idx = shard_indices(len(items), rank, world)
    if weights is None:
        return [items[i] for i in idx]
    ws = [float(x) for x in weights]
    if len(ws) != len(items):
        raise InputError(None, f"{len(ws)} weights for {len(items)} batches")
    return [items[i] for i in idx], [ws[i] for i in idx]


# ====================================================================== data-parallel operators
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
    from hessian_spectra.curvature.operators import HessianOperator

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


# ====================================================================== block-parallel block spectra
@dataclass(frozen=True)
class BlockAssignment:
    """Which rank owns each item (``owners[i]``), the cost estimates used, each rank's estimated load
    and, once a run is done, each rank's measured seconds."""

    owners: tuple[int, ...]
    costs: tuple[float, ...]
    loads: tuple[float, ...]
    rank_seconds: tuple[float, ...] = ()

    def items(self, rank: int) -> list[int]:
        """The items ``rank`` owns, in increasing index order."""
        return [i for i, r in enumerate(self.owners) if r == rank]

    @property
    def imbalance(self) -> float:
        """max load / mean load (1.0 = perfectly balanced)."""
        mean = sum(self.loads) / max(len(self.loads), 1)
        return max(self.loads) / mean if mean > 0 else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "owners": list(self.owners),
            "costs": list(self.costs),
            "loads": list(self.loads),
            "imbalance": self.imbalance,
            "rank_seconds": list(self.rank_seconds),
        }


def assign_by_cost(costs: Sequence[float], world: int) -> BlockAssignment:
    """Greedy longest-processing-time assignment (deterministic: ties go to the lower index/rank);
    within 4/3 of the optimal makespan."""
    if world < 1:
        raise InputError(None, f"world size must be >= 1, got {world}")
    cs = [float(c) for c in costs]
    if any(not math.isfinite(c) or c < 0 for c in cs):
        raise InputError(None, "costs must be finite and non-negative")
    heap = [(0.0, r) for r in range(world)]
    owners = [0] * len(cs)
    for i in sorted(range(len(cs)), key=lambda i: (-cs[i], i)):
        load, r = heapq.heappop(heap)
        owners[i] = r
        heapq.heappush(heap, (load + cs[i], r))
    loads = [0.0] * world
    for i, r in enumerate(owners):
        loads[r] += cs[i]
    return BlockAssignment(tuple(owners), tuple(cs), tuple(loads))


def estimate_block_costs(
    blocks: Sequence[Any], steps: int, backward_cost: float | None = None
) -> list[float]:
    """A static cost guess for a block's Krylov run: ``min(steps, n) * (backward_cost + n * min(steps, n))``
    for a block of n parameters (HVPs plus full reorthogonalisation). Crude: a block's pruned backward
    costs more the earlier its layer sits, which sizes cannot see; :func:`measure_block_costs` can."""
    sizes = [int(b.numel) if hasattr(b, "numel") else int(b) for b in blocks]
    if backward_cost is None:
        backward_cost = sum(sizes) / max(len(sizes), 1)
    return [min(steps, n) * (float(backward_cost) + n * min(steps, n)) for n in sizes]


def measure_block_costs(operator: Any, blocks: Sequence[Any], steps: int, group: Any = None) -> list[float]:
    """Cost of each block's Krylov run, ``min(steps, n) * t_b``, with ``t_b`` the measured time of one
    block HVP (ranks time a round-robin share after one warm-up HVP and share the timings, so every rank
    gets the same list). Costs about one HVP per block: under 1% of a typical SLQ run."""
    rank, world = _rank_world(group)
    mine = shard_indices(len(blocks), rank, world)
    times = {}
    if mine:
        gen = torch.Generator().manual_seed(0)
        warm = operator.block_diagonal([blocks[mine[0]]])
        warm.matvec_many([torch.randn(int(blocks[mine[0]].numel), generator=gen, dtype=torch.float64)])
        for i in mine:
            mop = operator.block_diagonal([blocks[i]])
            v = torch.randn(int(blocks[i].numel), generator=gen, dtype=torch.float64)
            t = time.perf_counter()
            mop.matvec_many([v])
            times[i] = time.perf_counter() - t
    if world > 1:
        for part in _gather_objects(times, "sharing block timings", group):
            times.update(part)
    return [min(steps, int(b.numel)) * times[i] for i, b in enumerate(blocks)]


def block_spectra(
    operator: Any,
    blocks: Sequence[Any],
    *,
    method: str = "slq",
    group: Any = None,
    costs: Sequence[float] | str = "measure",
    seed: int = 0,
    **kwargs: Any,
) -> tuple[list[Any], BlockAssignment]:
    """Per-block spectra with the blocks split over ranks; every rank returns all results in block order.

    ``operator`` is this rank's full-data operator (a HessianOperator on ALL batches; or anything with
    ``block_diagonal(blocks)``). ``method="slq"`` runs :func:`~hessian_spectra.krylov.slq.slq_lockstep` (kwargs:
    ``num_probes``, ``steps``, ``probe``, ...), ``"lanczos"`` :func:`~hessian_spectra.krylov.lanczos.lanczos_lockstep`
    (``k``, ``which``, ``tol``, ``max_steps``). Block ``i`` is seeded by ``block_seed(seed, i)`` with
    its index in ``blocks``, so results equal a single-process lockstep run over all ``blocks``.
    ``costs``: ``"measure"`` (:func:`measure_block_costs`, the default), ``"estimate"``
    (:func:`estimate_block_costs`) or one number per block; the plan returned has each rank's seconds.
    """
    from hessian_spectra.krylov.lanczos import default_max_steps, lanczos_lockstep
    from hessian_spectra.krylov.slq import slq_lockstep

    if method not in ("slq", "lanczos"):
        raise InputError(None, f"method must be 'slq' or 'lanczos', got {method!r}")
    if isinstance(operator, DistributedHessianOperator) and operator.world_size > 1:
        raise InputError(
            None, "block_spectra splits blocks, not data: give each rank a full-data local operator"
        )
    blocks = list(blocks)
    if not blocks:
        raise InputError(None, "no blocks given")
    rank, world = _rank_world(group)
    if isinstance(costs, str):
        if method == "slq":
            steps = int(kwargs.get("steps", 30))
        else:
            steps = int(kwargs.get("max_steps") or default_max_steps(10**9, int(kwargs.get("k", 5))))
        if costs == "measure":
            costs = measure_block_costs(operator, blocks, steps, group)
        elif costs == "estimate":
            costs = estimate_block_costs(blocks, steps)
        else:
            raise InputError(None, f"costs must be 'measure', 'estimate' or numbers, got {costs!r}")
    elif len(costs) != len(blocks):
        raise InputError(None, f"{len(costs)} costs for {len(blocks)} blocks")
    plan = assign_by_cost(costs, world)
    mine = plan.items(rank)
    error: BaseException | None = None
    results: dict[int, Any] = {}
    seconds = 0.0
    if mine:
        started = time.perf_counter()
        try:
            mop = operator.block_diagonal([blocks[i] for i in mine])
            run = slq_lockstep if method == "slq" else lanczos_lockstep
            out = run(mop, seed=seed, indices=mine, **kwargs)
            results = dict(zip(mine, out, strict=True))
        except Exception as exc:
            if world == 1:
                raise
            error = exc
        seconds = time.perf_counter() - started
    if world == 1:
        return [results[i] for i in range(len(blocks))], replace(plan, rank_seconds=(round(seconds, 4),))
    payload = (None if error is None else _one_line(error), results if error is None else {}, seconds)
    gathered = _gather_objects(payload, "gathering block spectra", group)
    failures = {r: p[0] for r, p in enumerate(gathered) if p[0] is not None}
    if failures:
        raise RankFailure("block spectra", failures) from error
    merged: dict[int, Any] = {}
    for _, part, _ in gathered:
        merged.update(part)
    plan = replace(plan, rank_seconds=tuple(round(p[2], 4) for p in gathered))
    return [merged[i] for i in range(len(blocks))], plan


# ====================================================================== matrix-parallel weights probe
def _record_cost(record: Any) -> float:
    """SVD-like cost of a tensor's matrices: sum of rows * cols * min(rows, cols)."""
    shapes = getattr(record, "matrix_shapes", ()) or ()
    if shapes:
        return float(sum(r * c * min(r, c) for r, c in shapes))
    n = math.prod(record.shape) if record.shape else 1
    return float(n) ** 1.5


def analyze_weights_distributed(
    source: str | Path | nn.Module,
    settings: Any = None,
    *,
    group: Any = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int, str], None] | None = None,
) -> Any:
    """:func:`hessian_spectra.weights.probe.analyze_weights` with the tensors split over ranks by SVD cost.

    Each rank opens the checkpoint (headers only), reads just its own tensors one at a time and
    decomposes them (on ``device``: ``"auto"`` picks CUDA when available); results are gathered and
    every rank returns the same :class:`~hessian_spectra.weights.results.WeightsReport`, equal to the single-process one
    except for timing fields in ``provenance`` (which also records the world size and the loads).
    """
    from hessian_spectra.checkpoints.matrices import extract_matrices
    from hessian_spectra.checkpoints.reader import open_checkpoint
    from hessian_spectra.weights.plan import WeightsSettings, compute_dtype_of, plan_inventory
    from hessian_spectra.weights.probe import analyse_view
    from hessian_spectra.weights.provenance import provenance
    from hessian_spectra.weights.results import WeightsReport
    from hessian_spectra.weights.summary import summarize

    settings = settings or WeightsSettings()
    compute_dtype = compute_dtype_of(settings)
    dev = resolve_device(device)
    rank, world = _rank_world(group)

    def local_part() -> tuple[Any, ...]:
        """Plan every tensor (headers only), then read and decompose this rank's share."""
        with open_checkpoint(source) as ckpt:
            records = plan_inventory(ckpt, settings)
            todo = [r for r in records if r.status == "analysed"]
            plan = assign_by_cost([_record_cost(r) for r in todo], world)
            mine = plan.items(rank)
            out: dict[int, list[Any]] = {}
            for j, i in enumerate(mine):
                record = todo[i]
                if progress is not None:
                    progress(j, len(mine), record.name)
                tensor = ckpt.load(record.name)
                views = extract_matrices(record, tensor)
                if dev.type != "cpu":
                    views = [replace(v, matrix=v.matrix.to(dev)) for v in views]
                out[i] = [analyse_view(v, ckpt.config, settings, compute_dtype) for v in views]
                del tensor, views
            if progress is not None:
                progress(len(mine), len(mine), "")
            return records, todo, plan, out, tuple(ckpt.files), tuple(ckpt.notes), ckpt.source

    old_threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    error: BaseException | None = None
    part: tuple[Any, ...] = ()
    try:
        part = local_part()
    except Exception as exc:  # shared with every rank below, then raised everywhere
        if world == 1:
            raise
        error = exc
    finally:
        if settings.threads:
            torch.set_num_threads(old_threads)
    own_seconds = time.perf_counter() - started
    if world > 1:
        payload = (
            None if error is None else _one_line(error),
            part[3] if error is None else {},
            own_seconds,
        )
        gathered = _gather_objects(payload, "gathering the weights probe", group)
        failures = {r: p[0] for r, p in enumerate(gathered) if p[0] is not None}
        if failures:
            raise RankFailure("weights probe", failures) from error
        merged: dict[int, list[Any]] = {}
        for _, share, _ in gathered:
            merged.update(share)
        rank_seconds = [round(p[2], 4) for p in gathered]
    else:
        merged, rank_seconds = part[3], [round(own_seconds, 4)]
    records, todo, plan, _, files, notes, display = part
    results = [m for i in range(len(todo)) for m in merged[i]]
    elapsed = time.perf_counter() - started
    summary = summarize([m.metrics for m in results if m.metrics is not None])
    extra = {
        "analysis_seconds": round(elapsed, 4),
        "distributed": {
            "world_size": world,
            "backend": dist.get_backend(group) if world > 1 else None,
            "device": str(dev),
            "rank_seconds": rank_seconds,
            "assignment_imbalance": round(plan.imbalance, 4),
        },
    }
    return WeightsReport(
        source=display,
        files=files,
        inventory=tuple(records),
        matrices=tuple(results),
        summary=summary,
        settings=settings,
        provenance=provenance(settings.seed, extra),
        notes=notes,
    )
