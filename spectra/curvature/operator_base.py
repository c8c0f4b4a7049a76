"""The plumbing every curvature operator shares (:class:`_CurvatureBase`: parameter selection, float64
copies, batch weights, guards, flat vectors cut per parameter device, the attention fallback) and the
device/storage helpers it needs; no curvature maths, so the Hessian and the GGN both build on it.
Design notes: spectra/docs/curvature_operators.md.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from hessian_spectra.curvature.block_operators import RestrictedOperator
from hessian_spectra.curvature.blocks import Block
from hessian_spectra.curvature.guards import (
    BufferKeeper,
    eval_mode,
    is_double_backward_error,
    math_attention,
    uses_fused_attention,
)
from hessian_spectra.curvature.losses import (
    as_batch_list,
    cast_floating,
    is_causal_lm,
    resolve_weights,
)
from hessian_spectra.errors import InputError
from torch import nn
from torch.func import functional_call

__all__ = ["input_device"]


class _Wrapper(nn.Module):
    """Holds the model as ``self.model`` so functional_call can swap its parameters around any callable."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, Any], Any]):
        super().__init__()
        self.model = model
        self._fn = fn

    def forward(self, batch: Any) -> Any:
        return self._fn(self.model, batch)


def input_device(model: nn.Module) -> torch.device:
    """Where a batch goes: the input embedding's device (HF ``get_input_embeddings()``, which is where a
    ``device_map`` model takes its inputs), else the first parameter's, else the CPU."""
    get = getattr(model, "get_input_embeddings", None)
    if callable(get):
        try:
            emb = get()
        except (NotImplementedError, AttributeError, TypeError):
            emb = None
        w = getattr(emb, "weight", None)
        if isinstance(w, torch.Tensor) and w.device.type != "meta":
            return w.device
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _concrete_device(device: str | torch.device) -> torch.device:
    """``device`` with its index filled in as tensors report it (``"cuda"`` -> ``cuda:<current>``), so it
    compares equal to the parameters' devices; InputError for a device torch cannot use."""
    try:
        return torch.empty(0, device=device).device
    except (RuntimeError, ValueError, AssertionError) as err:
        raise InputError(None, f"vector_device {str(device)!r} is not usable here ({err!s:.100})") from None


def _storage_key(t: torch.Tensor) -> int | None:
    """The tensor's storage address, or None for tensors without one (lazy/XLA device tensors)."""
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


def _check_resident(model: nn.Module) -> None:
    """Refuse parameters/buffers on the meta device (device_map offload to CPU/disk, or never loaded)."""
    meta = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.device.type == "meta"]
    if meta:
        raise InputError(
            None,
            f"{len(meta)} parameter/buffer tensor(s) are on the meta device (first: {meta[0]!r}): offloaded "
            "to CPU/disk by a device_map, or never loaded; HVPs need every tensor resident on a device "
            "(give the device_map more GPU memory or GPUs, or load the model on one device)",
        )


class _CurvatureBase:
    """Shared plumbing: parameter selection, float64 copies, batch weights, guards, flat vectors."""

    def __init__(
        self,
        model: nn.Module,
        batches: Any,
        fn: Callable[[nn.Module, Any], Any],
        *,
        params: Sequence[str] | None,
        dtype: torch.dtype | None,
        weighting: str | Sequence[float],
        attention: str,
        eval_mode: bool,
        shift_labels: bool | str,
        vector_device: str | torch.device | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise InputError(None, f"model must be a torch.nn.Module, got {type(model).__name__}")
        if attention not in ("auto", "math", "off"):
            raise InputError(None, f"attention must be 'auto', 'math' or 'off', got {attention!r}")
        self.notes: list[str] = []
        self._user_model = model
        named_user = dict(model.named_parameters())
        if params is None:
            names = [n for n, p in named_user.items() if p.requires_grad]
        else:
            names = list(dict.fromkeys(params))
            unknown = [n for n in names if n not in named_user]
            if unknown:
                raise InputError(
                    None, f"unknown parameter(s) {unknown}; the model has {len(named_user)} parameters"
                )
        if not names:
            raise InputError(
                None, "no parameters to differentiate (none requires grad and params was not given)"
            )
        _check_resident(model)
        model_dtype = named_user[names[0]].dtype
        if dtype is not None and any(named_user[n].dtype != dtype for n in names):
            self._model = copy.deepcopy(model).to(dtype)
            self.notes.append(f"computing in {dtype} on a private copy of the model; the model is untouched")
        else:
            self._model = model
            dtype = dtype or model_dtype
        self.dtype: torch.dtype = dtype
        named = dict(self._model.named_parameters())
        self.param_names: list[str] = names
        self.param_shapes: dict[str, tuple[int, ...]] = {n: tuple(named[n].shape) for n in names}
        self._param_index = {n: i for i, n in enumerate(names)}
        self._offsets: dict[str, tuple[int, int]] = {}
        start = 0
        for n in names:
            k = named[n].numel()
            self._offsets[n] = (start, start + k)
            start += k
        self.dim: int = start
        self.param_devices: list[torch.device] = [named[n].device for n in names]
        self.device: torch.device = (
            self.param_devices[0] if vector_device is None else _concrete_device(vector_device)
        )
        # pieces travel between the vector device and the parameters' devices only when they differ
        self._move = any(d != self.device for d in self.param_devices)
        self.input_device: torch.device = input_device(self._model)
        self._leaves = [named[n].detach().requires_grad_(True) for n in names]
        self._frozen = {f"model.{n}": p.detach() for n, p in named.items() if n not in self._param_index}
        self._leaf_storages = {_storage_key(p) for p in named.values()} - {None}
        self._wrapper = _Wrapper(self._model, fn)

        self.batches: list[Any] = [cast_floating(b, dtype, self.input_device) for b in as_batch_list(batches)]
        shift = is_causal_lm(model) if shift_labels == "auto" else bool(shift_labels)
        self.weighting, self.weights = resolve_weights(self.batches, weighting, shift)
        self.total_weight: float = float(sum(self.weights))
        self._active = [(b, w) for b, w in zip(self.batches, self.weights, strict=True) if w > 0]

        self._eval = bool(eval_mode)
        self._buffers = BufferKeeper(self._model)
        if self._eval and any(m.training for m in model.modules()):
            self.notes.append(
                "model has modules in train mode: curvature computed in eval mode (dropout off, BatchNorm "
                "running statistics); every module's mode is restored afterwards"
            )
        self._attention = attention
        self._guard_on = attention == "math"
        if attention == "auto":
            reason = uses_fused_attention(self._model)
            if reason is not None:
                self._guard_on = True
                self.notes.append(
                    f"{reason}: fused attention kernels have no double backward, so every forward runs with "
                    "the SDPA MATH backend and eager HF attention (restored afterwards)"
                )
        self._count = 0
        self._batch_hvps = 0

    # ---------------------------------------------------------------- counters and vectors
    @property
    def num_matvecs(self) -> int:
        """Operator applications so far (each column of a ``matmat`` counts one)."""
        return self._count

    @property
    def num_hvps(self) -> int:
        """Same as :attr:`num_matvecs` (one HVP = one application to the whole data)."""
        return self._count

    @property
    def num_batch_hvps(self) -> int:
        """Per-batch second-order passes so far (``num_matvecs`` x number of batches for full matvecs)."""
        return self._batch_hvps

    @property
    def num_batches(self) -> int:
        return len(self.batches)

    @property
    def multi_device(self) -> bool:
        """True when some parameter is not on the vector device (pieces are copied each way per HVP)."""
        return self._move

    def param_device(self, name: str) -> torch.device:
        """The device parameter ``name`` lives on (where its piece of a vector must go for a backward)."""
        return self.param_devices[self._param_index[name]]

    def split(self, v: torch.Tensor) -> list[torch.Tensor]:
        """Flat ``v`` cut into parameter-shaped pieces, in :attr:`param_names` order, each on its parameter's
        device: views of ``v`` when all parameters share its device, copies otherwise."""
        views = [v[a:b].view(self.param_shapes[n]) for n, (a, b) in self._offsets.items()]
        if not self._move:
            return views
        return [t.to(d) for t, d in zip(views, self.param_devices, strict=True)]

    def _split_cols(self, V: torch.Tensor) -> list[torch.Tensor]:
        """The ``(k, *shape)`` pieces of a ``(dim, k)`` matrix for a batched backward (on parameter devices)."""
        k = V.shape[1]
        parts = [V[a:b].T.reshape(k, *self.param_shapes[n]) for n, (a, b) in self._offsets.items()]
        if not self._move:
            return parts
        return [t.to(d) for t, d in zip(parts, self.param_devices, strict=True)]

    def flatten(self, parts: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """Concatenate parameter-shaped tensors (None = zeros), from any device, into one flat vector on
        the vector device."""
        out = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for (a, b), t in zip(self._offsets.values(), parts, strict=True):
            if t is not None:  # .to first: some devices (lazy tensors) refuse a cross-device copy_
                out[a:b].copy_(t.reshape(-1).to(self.device))
        return out

    def _cat(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Flat concatenation of one full set of parameter-shaped tensors (``torch.cat`` on one device;
        per-piece copies onto the vector device when the pieces sit on several)."""
        if not self._move:
            return torch.cat([t.reshape(-1) for t in parts])
        return self.flatten(parts)

    def _cat_cols(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(dim, k)`` from per-parameter ``(k, numel)`` pieces (moved to the vector device if needed)."""
        if self._move:
            parts = [t.to(self.device) for t in parts]
        return torch.cat(list(parts), dim=1).T

    def param_slice(self, name: str) -> slice:
        """Where parameter ``name`` lives in the flat vector."""
        a, b = self._offsets[name]
        return slice(a, b)

    def take(self, block: Block, v: torch.Tensor) -> torch.Tensor:
        """The block's entries of a flat full-dimension vector."""
        return block.gather(lambda n: v[self.param_slice(n)])

    def embed(self, block: Block, vb: torch.Tensor) -> torch.Tensor:
        """A flat full-dimension vector that is ``vb`` on the block and zero elsewhere."""
        out = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        block.scatter(vb.to(self.dtype), lambda n: out[self.param_slice(n)])
        return out

    def parameters_vector(self) -> torch.Tensor:
        """The differentiated parameters as one flat vector (a copy, in the operator dtype)."""
        return self._cat([p.detach() for p in self._leaves])

    def _check_vec(self, v: torch.Tensor) -> torch.Tensor:
        if not isinstance(v, torch.Tensor) or v.shape != (self.dim,):
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"expected a flat vector of shape ({self.dim},), got {shape}")
        return v.to(device=self.device, dtype=self.dtype)

    def _check_mat(self, V: torch.Tensor) -> torch.Tensor:
        if not isinstance(V, torch.Tensor) or V.ndim != 2 or V.shape[0] != self.dim:
            shape = tuple(V.shape) if isinstance(V, torch.Tensor) else type(V).__name__
            raise ValueError(f"expected a matrix of shape ({self.dim}, k), got {shape}")
        return V.to(device=self.device, dtype=self.dtype)

    # ---------------------------------------------------------------- forward plumbing
    @contextlib.contextmanager
    def _context(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            stack.enter_context(self._buffers())  # BatchNorm statistics never change, even in train mode
            if self._eval:
                stack.enter_context(eval_mode(self._model))
            if self._guard_on:
                stack.enter_context(math_attention(self._model, self.notes))
            yield

    def _call(self, leaves: Sequence[torch.Tensor], batch: Any) -> Any:
        params = dict(self._frozen)
        params.update({f"model.{n}": t for n, t in zip(self.param_names, leaves, strict=True)})
        return functional_call(self._wrapper, params, (batch,), strict=False, tie_weights=True)

    def _with_attention_fallback(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn``; if a fused attention kernel refuses a second derivative, switch the guard on and rerun."""
        try:
            return fn()
        except (RuntimeError, NotImplementedError) as err:
            if self._attention != "auto" or self._guard_on or not is_double_backward_error(err):
                raise
        self._guard_on = True
        self.notes.append(
            "a fused scaled_dot_product_attention kernel has no double backward: switched to the SDPA MATH "
            "backend (and eager HF attention) for every forward of this operator; weights are unchanged"
        )
        self._drop_graphs()
        return fn()

    def _drop_graphs(self) -> None:  # overridden where graphs are kept
        pass

    def restrict(self, block: Block) -> RestrictedOperator:
        """The diagonal block H_bb as a LinearOperator of dimension ``block.numel``."""
        for name in block.params:
            if name not in self.param_shapes:
                raise InputError(None, f"block {block.name!r}: {name!r} is not a differentiated parameter")
        return RestrictedOperator(self, block)
