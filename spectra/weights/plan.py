"""What the weights probe will compute, decided from its settings and tensor metadata alone.

The settings, the inventory (which tensors are analysed or skipped, and why), the full-vs-partial spectrum
choice per matrix and the compute dtype: everything fixed before any tensor data is read.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from hessian_spectra.checkpoints.matrices import ExtractOptions, TensorRecord, plan_tensor
from hessian_spectra.checkpoints.reader import Checkpoint

if TYPE_CHECKING:
    import torch

#: Matrices with more elements than this get a partial (top/bottom-k) spectrum unless told otherwise.
DEFAULT_FULL_MAX_ELEMENTS = 150_000_000


@dataclass(frozen=True)
class WeightsSettings:
    """Everything that changes the numbers of a weights report (recorded in its provenance)."""

    layers: tuple[str, ...] = ()
    topk: int | None = None
    dtype: str = "float64"
    method: str = "auto"
    threads: int | None = None
    seed: int = 0
    full_max_elements: int = DEFAULT_FULL_MAX_ELEMENTS
    min_dim: int = 2
    conv_rule: str = "flatten"
    split_qkv: bool = True
    #: also summarise Adam's second moments per parameter when the checkpoint holds optimizer state
    optimizer_state: bool = False
    #: the nested entry of a torch checkpoint to read (``"ema"``); None: chosen automatically
    entry: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compute_dtype_of(settings: WeightsSettings) -> torch.dtype:
    """The torch dtype the spectra are computed in (validated: float64 or float32)."""
    import torch

    if settings.dtype not in ("float64", "float32"):
        raise ValueError(f"dtype must be float64 or float32, got {settings.dtype!r}")
    return torch.float64 if settings.dtype == "float64" else torch.float32


def plan_inventory(ckpt: Checkpoint, settings: WeightsSettings) -> list[TensorRecord]:
    """One record per tensor from metadata alone: analysed (with its matrices) or skipped with a reason."""
    options = ExtractOptions(
        min_dim=settings.min_dim, conv_rule=settings.conv_rule, split_qkv=settings.split_qkv
    )
    records = []
    for name in ckpt.names():
        record = plan_tensor(
            ckpt.meta(name), config=ckpt.config, module_type=ckpt.module_types.get(name), options=options
        )
        if record.status == "analysed" and settings.layers and not _selected(name, settings.layers):
            record = _skip(record, "not selected by --layers")
        records.append(record)
    records.extend(plan_tensor(meta, options=options) for meta in ckpt.extras())  # optimizer state, listed
    return records


def _spectrum_plan(shape: tuple[int, int], settings: WeightsSettings) -> tuple[int | None, str, str]:
    """``(k, which, note)``: k None for a full spectrum, else the partial spectrum to compute and why."""
    numel = shape[0] * shape[1]
    k, which, note = settings.topk, "both", ""
    if k is None and numel > settings.full_max_elements:
        # automatic fallback for huge matrices: top-k by matrix-vector products only (bottom-k needs a
        # QR factor, i.e. a float64 copy of the whole matrix, which is what this path avoids)
        k, which = 64, "top"
        note = f"{numel} elements > full_max_elements={settings.full_max_elements}: top-{k} only"
    if k is not None and k >= min(shape):
        return None, which, note
    return k, which, note


def _selected(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _skip(record: TensorRecord, reason: str) -> TensorRecord:
    from dataclasses import replace

    return replace(record, status="skipped", reason=reason, matrices=())
