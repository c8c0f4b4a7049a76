"""The live-module backend: a ``torch.nn.Module``'s ``state_dict()`` as a tensor source (never modified).

Opening a module (module types, its HF config) is in :func:`hessian_spectra.checkpoints.reader._open_module`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from hessian_spectra.checkpoints.base import TensorMeta, _dtype_name, _torch_to_numpy
from hessian_spectra.checkpoints.limits import show_name
from hessian_spectra.errors import InputError

if TYPE_CHECKING:
    import torch


class _ModuleSource:
    """A live module: metadata from ``state_dict()``; ``load`` returns a detached copy."""

    def __init__(self, module: torch.nn.Module):
        import torch

        sd = module.state_dict(keep_vars=False)
        self.tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
        self.metas = {
            k: TensorMeta(k, tuple(t.shape), _dtype_name(t.dtype), None) for k, t in self.tensors.items()
        }
        self.path = f"<module {type(module).__name__}>"

    def load_numpy(self, name: str) -> np.ndarray:
        return _torch_to_numpy(self.load(name))

    def load(self, name: str) -> torch.Tensor:
        t = self.tensors[name]
        if t.device.type == "meta":
            raise InputError(self.path, f"tensor '{show_name(name)}' is on the meta device and has no data")
        return t.detach().clone()

    def close(self) -> None:
        self.tensors = {}
