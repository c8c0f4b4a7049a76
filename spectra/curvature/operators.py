"""Matrix-free curvature operators of a model's mean loss: the Hessian (several HVP engines) and the
Gauss-Newton matrix, both satisfying :class:`hessian_spectra.krylov.linop.LinearOperator` on flat parameter vectors.

The operator is the curvature of the WEIGHTED MEAN loss over all batches,
``L = sum_b w_b L_b / sum_b w_b`` with ``L_b`` the mean loss of batch b and ``w_b`` its example (or token)
count, so splitting the data into micro-batches never changes the answer.

Hessian modes:
* ``"reuse"``: per batch, one forward and a ``create_graph`` backward, kept; each HVP is one second
  backward per batch (the cheapest exact HVP).
* ``"recompute"``: forward + double backward per HVP per batch (for graphs that would not fit memory).
* ``"fwd_rev"``: ``torch.func`` forward-over-reverse (jvp of grad).
* ``"finite_difference"``: central difference of gradients (approximate; never chosen automatically).
``"auto"`` picks reuse when the estimated kept graphs fit ``max_graph_bytes``, else recompute.

The user's model is never changed: gradients are taken with respect to detached views (or float64
copies) of its parameters through :func:`torch.func.functional_call`, eval mode and the attention guard
are restored after every forward.

Devices. Flat vectors (inputs, results, gradient, Lanczos basis) live on ONE device,
``vector_device`` (default: the device of the first differentiated parameter). A model whose parameters
span several devices (an HF ``device_map`` model split over GPUs) is handled model-parallel: each
parameter's piece of a vector is copied to that parameter's device for the backward pass and each
result piece is copied back, one copy per tensor each way. When every parameter sits on the vector
device nothing is copied (the pieces are views). Batches are moved once, at construction, to the
device of the input embedding (HF ``get_input_embeddings()``) or else of the first parameter; the
model's own forward (accelerate's hooks for a ``device_map`` model) moves activations between devices.
Parameters on the ``meta`` device (offloaded to CPU/disk by a ``device_map``, or never loaded) are
refused: the offload hooks would swap real weights in behind the differentiated leaves.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from hessian_spectra.curvature.blocks import Block, BlockDiagonalOperator, RestrictedOperator
from hessian_spectra.curvature.guards import (
    eval_mode,
    is_double_backward_error,
    math_attention,
    uses_fused_attention,
)
from hessian_spectra.curvature.losses import (
    IGNORE_INDEX,
    LossFn,
    _logits,
    _split_xy,
    as_batch_list,
    batch_size_hint,
    cast_floating,
    causal_lm_loss,
    cross_entropy,
    is_causal_lm,
    model_loss,
    mse,
    resolve_weights,
)
from hessian_spectra.errors import InputError
from torch import nn
from torch.func import functional_call

__all__ = [
    "HessianOperator",
    "GGNOperator",
    "cross_entropy",
    "mse",
    "model_loss",
    "causal_lm_loss",
    "HESSIAN_MODES",
]

HESSIAN_MODES = ("auto", "reuse", "recompute", "fwd_rev", "finite_difference")
DEFAULT_MAX_GRAPH_BYTES = 4 * 2**30
DEFAULT_MAX_MATMAT_BYTES = 2**30


class _Wrapper(nn.Module):
    """Holds the model as ``self.model`` so functional_call can swap its parameters around any callable."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, Any], Any]):
        super().__init__()
        self.model = model
        self._fn = fn

    def forward(self, batch: Any) -> Any:
        return self._fn(self.model, batch)


@contextlib.contextmanager
def _count_saved_bytes(exclude: set[int], dtypes: set[torch.dtype]) -> Iterator[list[int]]:
    """Sum the bytes of distinct tensor storages autograd saves (an estimate of a graph's memory);
    the floating dtypes seen go into ``dtypes``."""
    seen: set[int] = set()
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            dtypes.add(t.dtype)
        try:
            st = t.untyped_storage()
            key = st.data_ptr()
            if key not in seen and key not in exclude:
                seen.add(key)
                total[0] += st.nbytes()
        except (RuntimeError, NotImplementedError):  # pragma: no cover - tensor subclasses
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total


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


def _second_backward(
    grads: Sequence[torch.Tensor],
    leaves: Sequence[torch.Tensor],
    parts: Sequence[torch.Tensor],
    *,
    retain: bool,
    batched: bool = False,
) -> list[torch.Tensor | None]:
    """sum_i <grads_i, parts_i> differentiated w.r.t. ``leaves`` (one HVP, or several with ``batched``)."""
    idx = [i for i, g in enumerate(grads) if g.requires_grad]
    if not idx:
        return [None] * len(leaves)
    return list(
        torch.autograd.grad(
            [grads[i] for i in idx],
            list(leaves),
            grad_outputs=[parts[i] for i in idx],
            retain_graph=retain,
            allow_unused=True,
            is_grads_batched=batched,
        )
    )


class HessianOperator(_CurvatureBase):
    """Hessian of the weighted mean loss as a ``LinearOperator`` on flat parameter vectors.

    ``loss(model, batch)`` returns the batch's mean loss (None: the model output's ``.loss``).
    ``weighting``: ``"auto"`` (tokens for HF batches with labels, else examples), ``"examples"``,
    ``"tokens"``, ``"equal"`` or explicit per-batch numbers; the rule used is in :attr:`weighting`.
    ``dtype=torch.float64`` computes on a float64 copy. ``attention``: ``"auto"`` (switch to
    twice-differentiable attention when needed, noted in :attr:`notes`), ``"math"`` (always), ``"off"``.
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Any,
        loss: LossFn | None = None,
        *,
        params: Sequence[str] | None = None,
        mode: str = "auto",
        dtype: torch.dtype | None = None,
        weighting: str | Sequence[float] = "auto",
        max_graph_bytes: int = DEFAULT_MAX_GRAPH_BYTES,
        max_matmat_bytes: int = DEFAULT_MAX_MATMAT_BYTES,
        attention: str = "auto",
        eval_mode: bool = True,
        fd_eps: float | None = None,
        shift_labels: bool | str = "auto",
        vector_device: str | torch.device | None = None,
    ):
        if mode not in HESSIAN_MODES:
            raise InputError(None, f"unknown mode {mode!r}: use one of {', '.join(HESSIAN_MODES)}")
        self.loss_fn: LossFn = loss if loss is not None else model_loss
        hf_downcast = loss is None and dtype == torch.float64 and is_causal_lm(model)
        if hf_downcast:
            self.loss_fn = causal_lm_loss
        super().__init__(
            model,
            batches,
            self._scalar_loss,
            params=params,
            dtype=dtype,
            weighting=weighting,
            attention=attention,
            eval_mode=eval_mode,
            shift_labels=shift_labels,
            vector_device=vector_device,
        )
        if hf_downcast:
            self.notes.append(
                "HF's causal-LM loss casts logits with .float() (float64 -> float32); using the same shifted "
                "cross-entropy computed in float64 instead"
            )
        self.requested_mode = mode
        self.max_graph_bytes = int(max_graph_bytes)
        self.max_matmat_bytes = int(max_matmat_bytes)
        self.fd_eps: float = (
            float(fd_eps) if fd_eps is not None else float(torch.finfo(self.dtype).eps) ** (1 / 3)
        )
        self._mode: str | None = None if mode == "auto" else mode
        self._graphs: list[tuple[float, list[torch.Tensor]]] | None = None
        self._grad: torch.Tensor | None = None
        self._loss: float | None = None
        self.graph_bytes: int | None = None  # saved-tensor bytes of the first batch's graph (estimate)
        self._batched_ok = True
        self._low_precision_noted = False

    def _scalar_loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        out = self.loss_fn(model, batch)
        if not isinstance(out, torch.Tensor) or out.numel() != 1:
            raise InputError(None, "loss(model, batch) must return a scalar tensor (the batch mean)")
        return out.reshape(())

    # ---------------------------------------------------------------- graphs
    def _build(self, batch: Any, create_graph: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Loss and first-order gradients of one batch (None gradients replaced by zeros)."""
        measure = self.graph_bytes is None and create_graph
        dtypes: set[torch.dtype] = set()
        with contextlib.ExitStack() as stack:
            counter = (
                stack.enter_context(_count_saved_bytes(self._leaf_storages, dtypes)) if measure else None
            )
            with torch.enable_grad():
                loss = self._call(self._leaves, batch)
                grads = torch.autograd.grad(loss, self._leaves, create_graph=create_graph, allow_unused=True)
        if counter is not None:
            self.graph_bytes = counter[0]
            low = sorted(
                str(d).replace("torch.", "")
                for d in dtypes
                if torch.finfo(d).bits < torch.finfo(self.dtype).bits
            )
            if low and not self._low_precision_noted:
                self._low_precision_noted = True
                self.notes.append(
                    f"the model computes some intermediates in {', '.join(low)} although the operator is "
                    f"{str(self.dtype).replace('torch.', '')} (e.g. an HF norm that upcasts to float32): "
                    "results are only as precise as those"
                )
        return loss.detach(), [
            torch.zeros_like(p) if g is None else g for p, g in zip(self._leaves, grads, strict=True)
        ]

    def _drop_graphs(self) -> None:
        self._graphs = None
        self.graph_bytes = None
        if self.requested_mode == "auto":
            self._mode = None

    @property
    def mode(self) -> str:
        """The HVP mode in use (``"auto"`` is resolved by building the first batch's graph)."""
        self._prepare()
        assert self._mode is not None
        return self._mode

    def _estimated_total_bytes(self) -> float:
        first = batch_size_hint(self._active[0][0])
        total = sum(batch_size_hint(b) for b, _ in self._active)
        return float(self.graph_bytes or 0) * total / first

    def _prepare(self) -> None:
        """Resolve ``auto`` and, in reuse mode, build and keep every batch's first-order graph."""
        if self._mode is not None and (self._mode != "reuse" or self._graphs is not None):
            return
        graphs: list[tuple[float, list[torch.Tensor]]] = []
        losses: list[tuple[float, torch.Tensor]] = []
        with self._context():
            for k, (batch, w) in enumerate(self._active):
                loss, grads = self._build(batch)
                if k == 0 and self._mode is None:
                    est = self._estimated_total_bytes()
                    if est <= self.max_graph_bytes:
                        self._mode = "reuse"
                    else:
                        self._mode = "recompute"
                        self.notes.append(
                            f"kept graphs would take about {est / 2**20:.0f} MiB > max_graph_bytes "
                            f"({self.max_graph_bytes / 2**20:.0f} MiB): recomputing the graph for every HVP"
                        )
                losses.append((w, loss))
                graphs.append((w, grads))
                if self._mode != "reuse":
                    self._store_first_order(losses, graphs)
                    return
        self._graphs = graphs
        self._store_first_order(losses, graphs)

    def _store_first_order(self, losses, graphs) -> None:
        if len(losses) != len(self._active):
            return  # only the first batch was built (recompute-type mode): gradient computed on demand
        W = self.total_weight
        self._loss = float(sum(w * lb for w, lb in losses) / W)
        g = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for w, grads in graphs:
            g.add_(self._cat([t.detach() for t in grads]), alpha=w)
        self._grad = g / W

    def _for_each_graph(self, fn: Callable[[float, list[torch.Tensor], list[torch.Tensor]], None]) -> None:
        """Call ``fn(weight, grads, leaves)`` for every batch: kept graphs, or freshly built ones."""
        self._prepare()
        if self._mode == "reuse":
            assert self._graphs is not None
            for w, grads in self._graphs:
                fn(w, grads, self._leaves)
            return
        with self._context():
            for batch, w in self._active:
                _, grads = self._build(batch)
                fn(w, grads, self._leaves)
                del grads

    def reset(self) -> None:
        """Forget kept graphs and cached gradient (call after changing the model's weights in place)."""
        self._drop_graphs()
        self._grad = None
        self._loss = None

    # ---------------------------------------------------------------- first order
    def _first_order(self) -> None:
        if self._grad is not None:
            return
        self._prepare()
        if self._grad is not None:
            return
        W = self.total_weight
        g = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        loss = 0.0
        with self._context():
            for batch, w in self._active:
                lb, grads = self._build(batch, create_graph=False)
                loss += w * float(lb)
                g.add_(self._cat(grads), alpha=w)
        self._grad, self._loss = g / W, loss / W

    def gradient(self) -> torch.Tensor:
        """Flat gradient of the weighted mean loss (a copy)."""
        self._first_order()
        assert self._grad is not None
        return self._grad.clone()

    @property
    def loss_value(self) -> float:
        """The weighted mean loss at the current weights."""
        self._first_order()
        assert self._loss is not None
        return self._loss

    # ---------------------------------------------------------------- HVPs
    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector ``v`` of length :attr:`dim`."""
        v = self._check_vec(v)
        out = self._with_attention_fallback(lambda: self._apply(v[:, None]))[:, 0]
        self._count += 1
        return out

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """H V for a ``(dim, k)`` matrix: batched backward passes in memory-bounded chunks."""
        V = self._check_mat(V)
        if V.shape[1] == 0:
            return V.clone()
        out = self._with_attention_fallback(lambda: self._apply(V))
        self._count += V.shape[1]
        return out

    def _chunk(self, k: int) -> int:
        per_vector = max(self.graph_bytes or 0, 8 * self.dim, 1)
        return max(1, min(k, self.max_matmat_bytes // per_vector))

    def _apply(self, V: torch.Tensor) -> torch.Tensor:
        self._prepare()
        mode = self._mode
        if mode == "fwd_rev":
            return self._apply_fwd_rev(V)
        if mode == "finite_difference":
            return self._apply_fd(V)
        k = V.shape[1]
        if k == 1:
            return self._apply_one(V[:, 0], retain=mode == "reuse")[:, None]
        out = torch.zeros(self.dim, k, dtype=self.dtype, device=self.device)
        retain = mode == "reuse"
        count = 0

        def per_batch(w: float, grads: list[torch.Tensor], leaves: list[torch.Tensor]) -> None:
            nonlocal count
            chunk = self._chunk(k)
            for c0 in range(0, k, chunk):
                c1 = min(k, c0 + chunk)
                last = c1 == k
                keep = retain or not last
                if c1 - c0 == 1:
                    hs = _second_backward(grads, leaves, self.split(V[:, c0]), retain=keep)
                    out[:, c0] += w * self.flatten(hs)
                else:
                    out[:, c0:c1] += w * self._batched_hvp(grads, leaves, V[:, c0:c1], keep)
                count += c1 - c0

        self._for_each_graph(per_batch)
        self._batch_hvps += count
        return out / self.total_weight

    def _apply_one(self, v: torch.Tensor, retain: bool) -> torch.Tensor:
        """One HVP with one flat result allocation per batch (no zero-filled temporaries: each
        dim-sized allocation costs page faults that showed up as ~10% of a 2M-parameter HVP)."""
        parts = self.split(v)
        acc: list[torch.Tensor | None] = [None]

        def per_batch(w: float, grads: list[torch.Tensor], leaves: list[torch.Tensor]) -> None:
            hs = _second_backward(grads, leaves, parts, retain=retain)
            flat = self._cat(
                [torch.zeros_like(p) if h is None else h for p, h in zip(leaves, hs, strict=True)]
            )
            if acc[0] is None:
                scale = w / self.total_weight
                acc[0] = flat if scale == 1.0 else flat.mul_(scale)  # one batch: no pass over the vector
            else:
                acc[0].add_(flat, alpha=w / self.total_weight)

        self._for_each_graph(per_batch)
        self._batch_hvps += len(self._active)
        out = acc[0]
        return torch.zeros(self.dim, dtype=self.dtype, device=self.device) if out is None else out

    def _batched_hvp(self, grads, leaves, Vc: torch.Tensor, keep: bool) -> torch.Tensor:
        kc = Vc.shape[1]
        if self._batched_ok:
            parts = self._split_cols(Vc)
            try:
                hs = _second_backward(grads, leaves, parts, retain=True, batched=True)
                flat = [
                    torch.zeros(kc, p.numel(), dtype=self.dtype, device=p.device)
                    if h is None
                    else h.reshape(kc, -1)
                    for p, h in zip(leaves, hs, strict=True)
                ]
                return self._cat_cols(flat)
            except (RuntimeError, NotImplementedError) as err:
                if is_double_backward_error(err):
                    raise
                self._batched_ok = False
                self.notes.append(
                    f"batched backward (is_grads_batched) failed ({err!s:.120}); looping over vectors"
                )
        cols = []
        for j in range(kc):
            keep_j = keep or j < kc - 1
            cols.append(self.flatten(_second_backward(grads, leaves, self.split(Vc[:, j]), retain=keep_j)))
        return torch.stack(cols, dim=1)

    # forward-over-reverse ------------------------------------------------------------
    def _apply_fwd_rev(self, V: torch.Tensor) -> torch.Tensor:
        k = V.shape[1]
        out = torch.zeros(self.dim, k, dtype=self.dtype, device=self.device)
        primals = tuple(p.detach() for p in self._leaves)
        n = len(primals)
        with self._context():
            for batch, w in self._active:

                def f(*ps: torch.Tensor, batch: Any = batch) -> torch.Tensor:
                    return self._call(ps, batch)

                gradf = torch.func.grad(f, argnums=tuple(range(n)))

                def hvp(*tangents: torch.Tensor, gradf: Callable = gradf) -> tuple[torch.Tensor, ...]:
                    return torch.func.jvp(gradf, primals, tangents)[1]

                done = False
                if k > 1 and self._batched_ok:
                    try:
                        hs = torch.func.vmap(hvp)(*self._split_cols(V))
                        out += w * self._cat_cols([h.reshape(k, -1) for h in hs])
                        done = True
                    except (RuntimeError, NotImplementedError) as err:
                        if is_double_backward_error(err):
                            raise
                        self._batched_ok = False
                        self.notes.append(f"vmap over jvp failed ({err!s:.120}); looping over vectors")
                if not done:
                    for j in range(k):
                        hs = hvp(*self.split(V[:, j]))
                        out[:, j] += w * self.flatten(list(hs))
                self._batch_hvps += k
        return out / self.total_weight

    # finite differences ----------------------------------------------------------------
    def _grad_at(self, leaves: Sequence[torch.Tensor], batch: Any) -> torch.Tensor:
        with torch.enable_grad():
            leaves = [p.detach().requires_grad_(True) for p in leaves]
            loss = self._call(leaves, batch)
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        return self.flatten(list(grads))

    def fd_step(self, v: torch.Tensor) -> float:
        """The central-difference step h used for ``v``: ``fd_eps * max(1, |theta|) / |v|``."""
        theta = self.parameters_vector()
        return self.fd_eps * max(1.0, float(theta.norm())) / max(float(v.norm()), 1e-300)

    def _apply_fd(self, V: torch.Tensor) -> torch.Tensor:
        k = V.shape[1]
        out = torch.zeros(self.dim, k, dtype=self.dtype, device=self.device)
        base = [p.detach() for p in self._leaves]
        with self._context():
            for j in range(k):
                v = V[:, j]
                if float(v.norm()) == 0.0:
                    continue
                h = self.fd_step(v)
                parts = self.split(v)
                plus = [p + h * d for p, d in zip(base, parts, strict=True)]
                minus = [p - h * d for p, d in zip(base, parts, strict=True)]
                for batch, w in self._active:
                    diff = self._grad_at(plus, batch) - self._grad_at(minus, batch)
                    out[:, j] += (w / (2 * h)) * diff
                    self._batch_hvps += 1
        return out / self.total_weight

    # ---------------------------------------------------------------- blocks
    def block_diagonal(self, blocks: Sequence[Block] | None = None) -> BlockDiagonalOperator:
        """The block-diagonal operator over ``blocks`` (default: one block per parameter tensor)."""
        from hessian_spectra.curvature.blocks import parameter_blocks

        return BlockDiagonalOperator(self, list(blocks) if blocks is not None else parameter_blocks(self))


# ====================================================================== Gauss-Newton
GGN_LOSSES = ("cross_entropy", "mse")


def output_and_target(
    model: nn.Module, batch: Any, *, loss: str, shift: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Model output and target, flattened as the loss sees them: CE ``(N, C)`` logits + ``(N,)`` labels."""
    inputs, y = _split_xy(batch)
    out = _logits(model(**inputs) if isinstance(inputs, dict) else model(inputs))
    y = y.to(out.device)  # the output leaves the last device of a model split over several
    if loss == "cross_entropy":
        if shift:
            out, y = out[..., :-1, :], y[..., 1:]
        return out.reshape(-1, out.shape[-1]), y.reshape(-1)
    return out, y.reshape(out.shape).to(out.dtype)


class GGNOperator(_CurvatureBase):
    """Generalised Gauss-Newton ``G = J^T H_out J`` of the weighted mean loss, applied matrix-free.

    ``loss``: ``"cross_entropy"`` (mean over labels != -100; HF causal LMs shifted) or ``"mse"``
    (mean over elements). ``forward(model, batch) -> (output, target)`` overrides how the output is
    taken. Per HVP: ``J v`` by the double-vjp trick on the kept graph, ``H_out`` in closed form, then
    ``J^T``. ``mode``: ``"auto"``/``"reuse"`` (keep graphs) or ``"recompute"``.
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Any,
        loss: str = "cross_entropy",
        *,
        forward: Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor]] | None = None,
        params: Sequence[str] | None = None,
        mode: str = "auto",
        dtype: torch.dtype | None = None,
        weighting: str | Sequence[float] = "auto",
        attention: str = "auto",
        eval_mode: bool = True,
        shift_labels: bool | str = "auto",
        vector_device: str | torch.device | None = None,
    ):
        if loss not in GGN_LOSSES:
            raise InputError(None, f"GGN supports loss in {GGN_LOSSES}, got {loss!r}")
        if mode not in ("auto", "reuse", "recompute"):
            raise InputError(None, f"GGN mode must be auto, reuse or recompute, got {mode!r}")
        self.loss_name = loss
        shift = is_causal_lm(model) if shift_labels == "auto" else bool(shift_labels)
        if forward is None:

            def forward(m: nn.Module, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
                return output_and_target(m, b, loss=loss, shift=shift)

        super().__init__(
            model,
            batches,
            forward,
            params=params,
            dtype=dtype,
            weighting=weighting,
            attention=attention,
            eval_mode=eval_mode,
            shift_labels=shift,
            vector_device=vector_device,
        )
        self.mode = "recompute" if mode == "recompute" else "reuse"
        self._states: list[tuple[float, tuple]] | None = None

    def output_loss(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss as a function of the model output (mean, matching the operator's definition)."""
        if self.loss_name == "cross_entropy":
            return F.cross_entropy(z, y, ignore_index=IGNORE_INDEX)
        return (z - y).pow(2).mean()  # not F.mse_loss: its backward breaks torch.func forward-over-reverse

    def output_hessian_apply(self, z: torch.Tensor, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """H_out u in closed form (softmax covariance / n_valid, or 2/M identity)."""
        if self.loss_name == "cross_entropy":
            valid = (y != IGNORE_INDEX).to(z.dtype)
            n = valid.sum().clamp_min(1.0)
            p = torch.softmax(z.detach(), dim=-1)
            hu = p * u - p * (p * u).sum(-1, keepdim=True)
            return hu * valid[:, None] / n
        return u * (2.0 / z.numel())

    def _state(self, batch: Any) -> tuple:
        with torch.enable_grad():
            z, y = self._call(self._leaves, batch)
            u = torch.zeros_like(z, requires_grad=True)
            jtu = torch.autograd.grad(z, self._leaves, grad_outputs=u, create_graph=True, allow_unused=True)
        return z, y, u, jtu

    def _drop_graphs(self) -> None:
        self._states = None

    def _for_each_state(self, fn: Callable[[float, tuple], None]) -> None:
        if self.mode == "reuse":
            if self._states is None:
                with self._context():
                    self._states = [(w, self._state(b)) for b, w in self._active]
            for w, st in self._states:
                fn(w, st)
            return
        with self._context():
            for b, w in self._active:
                fn(w, self._state(b))

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """G v for a flat vector ``v`` of length :attr:`dim`."""
        v = self._check_vec(v)
        parts = self.split(v)

        def run() -> torch.Tensor:
            out = torch.zeros(self.dim, dtype=self.dtype, device=self.device)

            def per_batch(w: float, st: tuple) -> None:
                z, y, u, jtu = st
                idx = [i for i, t in enumerate(jtu) if t is not None and t.requires_grad]
                if not idx:
                    return
                (jv,) = torch.autograd.grad(
                    [jtu[i] for i in idx], u, grad_outputs=[parts[i] for i in idx], retain_graph=True
                )
                hjv = self.output_hessian_apply(z, y, jv)
                gv = torch.autograd.grad(
                    z, self._leaves, grad_outputs=hjv, retain_graph=True, allow_unused=True
                )
                out.add_(self.flatten(list(gv)), alpha=w)
                self._batch_hvps += 1

            self._for_each_state(per_batch)
            return out / self.total_weight

        out = self._with_attention_fallback(run)
        self._count += 1
        return out

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """G V column by column."""
        V = self._check_mat(V)
        return (
            torch.stack([self.matvec(V[:, j]) for j in range(V.shape[1])], dim=1) if V.shape[1] else V.clone()
        )

    def gradient(self) -> torch.Tensor:
        """Flat gradient of the weighted mean loss."""
        g = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        with self._context(), torch.enable_grad():
            for b, w in self._active:
                z, y = self._call(self._leaves, b)
                grads = torch.autograd.grad(self.output_loss(z, y), self._leaves, allow_unused=True)
                g.add_(self.flatten(list(grads)), alpha=w)
        return g / self.total_weight

    @property
    def loss_value(self) -> float:
        total = 0.0
        with self._context(), torch.no_grad():
            for b, w in self._active:
                z, y = self._call(self._leaves, b)
                total += w * float(self.output_loss(z, y))
        return total / self.total_weight
