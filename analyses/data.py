"""Models and data from the command line: the ``--model-factory module:function`` protocol.

A factory is any importable callable taking no arguments and returning either a mapping with keys
``model`` (an ``nn.Module``), ``batches`` (a list of batches, see :mod:`spectra.data`) and optionally
``loss`` (``loss(model, batch) -> mean loss``; default: the model output's ``.loss``), or the tuple
``(model, loss, batches)``. ``module`` may be a dotted module name or a path to a ``.py`` file.
Checkpoint weights (``.safetensors`` or a ``weights_only`` torch state dict) can be loaded into the
returned model with :func:`load_weights`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from spectra.errors import InputError

__all__ = ["Workload", "load_factory", "load_weights"]


@dataclass(frozen=True, eq=False)
class Workload:
    """A model with the loss and batches its Hessian is taken over."""

    model: nn.Module
    loss: Any
    batches: list[Any]
    source: str


def _import(module: str):
    if module.endswith(".py") or "/" in module:
        path = Path(module)
        if not path.is_file():
            raise InputError(module, "model factory file not found")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise InputError(module, "cannot import this file")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise InputError(module, f"cannot import module ({err})") from err


def load_factory(spec: str, weights: str | Path | None = None) -> Workload:
    """Call the ``module:function`` factory and check what it returns (see the module docstring)."""
    if ":" not in spec:
        raise InputError("--model-factory", f"expected module:function, got {spec!r}")
    module, _, name = spec.rpartition(":")
    fn = getattr(_import(module), name, None)
    if not callable(fn):
        raise InputError("--model-factory", f"{module} has no callable {name!r}")
    out = fn()
    if isinstance(out, Mapping):
        model, loss, batches = out.get("model"), out.get("loss"), out.get("batches")
    elif isinstance(out, tuple | list) and len(out) == 3:
        model, loss, batches = out
    else:
        raise InputError(
            "--model-factory", "factory must return {'model', 'batches', 'loss'} or (model, loss, batches)"
        )
    if not isinstance(model, nn.Module):
        raise InputError("--model-factory", f"factory returned a {type(model).__name__}, not an nn.Module")
    if batches is None or (isinstance(batches, list | tuple) and not batches):
        raise InputError("--model-factory", "factory returned no batches")
    if weights is not None:
        load_weights(model, weights)
    return Workload(model=model, loss=loss, batches=list(batches), source=spec)


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a ``.safetensors`` file or a torch state dict (``weights_only=True``) into ``model`` (strict)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(path, f"cannot read weights ({type(err).__name__}: {err})") from err
    if not isinstance(state, Mapping):
        raise InputError(path, "not a state dict")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(
            path,
            f"weights do not match the model: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}",
        )
