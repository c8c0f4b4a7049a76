"""The process group: joining and leaving it, rank/world queries, and collectives that fail cleanly.

Belongs here: every ``torch.distributed`` call the other parallel modules make goes through these
helpers, so an exception on one rank becomes the same :class:`RankFailure` on all ranks and a dead or
hung rank a :class:`CollectiveError` after the group timeout. World size 1 without a process group.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from hessian_spectra.errors import InputError, SpectraError

DEFAULT_TIMEOUT_S = 300.0


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


def _gather_shares(
    what: str, gathering: str, error: BaseException | None, share: dict[int, Any], seconds: float, group: Any
) -> tuple[dict[int, Any], list[float]]:
    """Every rank's ``share`` (item index -> result) merged, and each rank's seconds (rounded); if any
    rank passes an ``error``, every rank raises the same :class:`RankFailure` naming ``what``."""
    payload = (None if error is None else _one_line(error), share if error is None else {}, seconds)
    gathered = _gather_objects(payload, gathering, group)
    failures = {r: p[0] for r, p in enumerate(gathered) if p[0] is not None}
    if failures:
        raise RankFailure(what, failures) from error
    merged: dict[int, Any] = {}
    for _, part, _ in gathered:
        merged.update(part)
    return merged, [round(p[2], 4) for p in gathered]


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DistInfo",
    "RankFailure",
    "CollectiveError",
    "resolve_device",
    "init_distributed",
    "shutdown_distributed",
    "dist_info",
    "is_main_process",
    "check_all_ok",
]
