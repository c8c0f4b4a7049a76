"""What every workload is (a model, its loss and batches) and where its model lives.

Placement: ``device`` puts a model on one device; a model spread over several devices by a device map is
left as it is. :func:`model_placement` records the result for the report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = ["Workload", "place_model", "model_placement", "DEVICE_MAPS", "short_list"]

#: ``--device-map`` values: ``"auto"`` spreads a HF model over the visible GPUs (accelerate's planner).
DEVICE_MAPS = ("auto",)


@dataclass(frozen=True, eq=False)
class Workload:
    """A model with the loss and batches its Hessian is taken over.

    ``inputs`` says what was loaded (task, data file, pairs/images used, pooling); ``loading`` lists tensors
    the checkpoint lacked (``freshly_initialised``, only with ``allow_missing``) or held unused (``ignored``).
    """

    model: nn.Module
    loss: Any
    batches: list[Any]
    source: str
    placement: dict[str, Any] | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    loading: dict[str, Any] | None = None
    #: what the weights probe reads for this workload (a HF folder); None: the live model
    weights_source: str | None = None

    def report_extra(self) -> dict[str, Any]:
        """The report.json fields this workload contributes (placement, inputs, loading)."""
        return {"placement": self.placement, "inputs": self.inputs or None, "loading": self.loading}


def place_model(model: nn.Module, device: str) -> nn.Module:
    """Move ``model`` to ``device`` in place, unless it is already spread over several devices (a device
    map someone chose on purpose: it is left as it is). Returns the model."""
    devices = {t.device for t in (*model.parameters(), *model.buffers())}
    if len(devices) <= 1:
        model.to(device)
    return model


def model_placement(model: nn.Module) -> dict[str, Any]:
    """Where the model lives, for the report: device(s) with their parameter counts, dtype(s), device map."""
    by_device: dict[str, int] = {}
    dtypes: set[str] = set()
    for p in model.parameters():
        by_device[str(p.device)] = by_device.get(str(p.device), 0) + p.numel()
        dtypes.add(str(p.dtype).removeprefix("torch."))
    hf_map = getattr(model, "hf_device_map", None)
    return {
        "parameters_by_device": by_device,
        "dtypes": sorted(dtypes),
        "device_map": None
        if not isinstance(hf_map, Mapping)
        else {str(k): str(v) for k, v in hf_map.items()},
    }


def short_list(names: list[str] | tuple[str, ...] | set[str], first: int = 4) -> str:
    """``"a, b, c, d and 12 more"``: long lists of names in one line."""
    names = sorted(names)
    shown = ", ".join(names[:first])
    return shown + (f" and {len(names) - first} more" if len(names) > first else "")
