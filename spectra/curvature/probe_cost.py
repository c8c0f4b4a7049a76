"""What a Hessian probe run will cost before it starts: which spectra are exact (cheaper from columns
than estimated), the HVP counts (:class:`CostEstimate`), and the wrapper that turns every HVP into a step
of the progress bar."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from hessian_spectra.krylov.lanczos import default_max_steps

__all__ = ["CostEstimate", "estimate_cost", "exact_block_mask", "full_is_exact"]


@dataclass(frozen=True)
class CostEstimate:
    """HVP counts before the run (upper bounds: Lanczos may stop early once converged).

    A lockstep block step costs one graph build per batch (none when graphs are kept) plus one pruned
    backward per block still running, a block of several tensors (:class:`~hessian_spectra.curvature.blocks.CompositeBlock`)
    included; ``total_hvps`` and the progress bar count the step as one, and ``block_backwards`` (per
    batch) bounds the pruned backwards, which dominate with many blocks. Block dims are block sizes
    (the sum of a composite block's parts), so a chain runs ``min(block_steps, dim)`` steps.
    ``exact_full``: the whole spectrum from the ``dim`` Hessian columns (``exact_hvps``) instead of
    Lanczos + SLQ; ``exact_blocks`` blocks get theirs from ``exact_columns`` block columns in total
    (batched pruned backwards; each exact block counts one step of the progress bar).
    """

    dim: int
    num_blocks: int
    num_batches: int
    lanczos_hvps: int
    slq_hvps: int
    block_lockstep_calls: int
    block_backwards: int
    total_hvps: int
    exact_full: bool = False
    exact_hvps: int = 0
    exact_blocks: int = 0
    exact_columns: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        full = (
            f"exact full spectrum {self.exact_hvps} (dense, dim <= probes x steps)"
            if self.exact_full
            else f"Lanczos <= {self.lanczos_hvps}, full SLQ {self.slq_hvps}"
        )
        slq_blocks = self.num_blocks - self.exact_blocks
        return (
            f"up to {self.total_hvps} HVPs on {self.num_batches} batch(es), dim {self.dim}: {full}, block SLQ "
            f"{self.block_lockstep_calls} lockstep steps over {slq_blocks} blocks ({self.block_backwards} "
            f"pruned block backwards per batch), {self.exact_blocks} exact blocks ({self.exact_columns} "
            "columns, several per backward)"
        )


def exact_block_mask(block_dims: Sequence[int], settings: Any) -> list[bool]:
    """Which blocks get an exact spectrum: n <= ``block_probes`` x ``block_steps`` (its n columns cost no
    more than its SLQ), when ``settings.exact``."""
    budget = settings.block_probes * settings.block_steps
    return [bool(settings.exact and d <= budget) for d in block_dims]


def full_is_exact(dim: int, settings: Any) -> bool:
    """Whether the full-model spectrum is computed exactly: dim <= ``probes`` x ``steps``, when ``settings.exact``."""
    return bool(settings.full and settings.exact and dim <= settings.probes * settings.steps)


def estimate_cost(dim: int, num_batches: int, block_dims: Sequence[int], settings: Any) -> CostEstimate:
    """HVP counts of a run with these sizes (no model needed; see :class:`CostEstimate`)."""
    lz = sl = calls = backs = exact_hvps = 0
    exact_full = full_is_exact(dim, settings)
    if exact_full:
        exact_hvps = dim
    elif settings.full:
        lz = int(settings.lanczos_steps or default_max_steps(dim, settings.top_k))
        lz = min(lz, dim)
        sl = settings.probes * min(settings.steps, dim)
    mask = exact_block_mask(block_dims, settings) if settings.block else []
    slq_dims = [d for d, e in zip(block_dims, mask, strict=True) if not e]
    exact_dims = [d for d, e in zip(block_dims, mask, strict=True) if e]
    if slq_dims:
        calls = settings.block_probes * min(settings.block_steps, max(slq_dims))
        backs = sum(settings.block_probes * min(settings.block_steps, d) for d in slq_dims)
    return CostEstimate(
        dim=dim, num_blocks=len(block_dims) if settings.block else 0, num_batches=num_batches,
        lanczos_hvps=lz, slq_hvps=sl, block_lockstep_calls=calls, block_backwards=backs,
        total_hvps=lz + sl + calls + exact_hvps + len(exact_dims), exact_full=exact_full, exact_hvps=exact_hvps,
        exact_blocks=len(exact_dims), exact_columns=sum(exact_dims),
    )  # fmt: skip


class _Counted:
    """Wraps an operator so every matvec advances the progress callback."""

    def __init__(self, op: Any, tick: Callable[[str], None], label: str):
        self._op, self._tick, self._label = op, tick, label
        for key in ("dim", "dtype", "device", "names", "dims"):
            if hasattr(op, key):
                setattr(self, key, getattr(op, key))
        if hasattr(op, "matmat"):
            self.matmat = self._matmat

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        out = self._op.matmat(V)
        for _ in range(V.shape[1]):
            self._tick(self._label)
        return out

    @property
    def num_matvecs(self) -> int:
        return self._op.num_matvecs

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        out = self._op.matvec(v)
        self._tick(self._label)
        return out

    def matvec_many(self, vs: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
        out = self._op.matvec_many(vs)
        self._tick(self._label)
        return out
