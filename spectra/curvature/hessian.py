"""The Hessian operator: construction, HVP-mode resolution (``"auto"``: reuse or recompute by graph
memory), first-order graphs kept or rebuilt per batch, gradient and loss; how ``H V`` is computed in
each mode is in :mod:`hessian_spectra.curvature.hessian_products`.
Design notes: spectra/docs/curvature_operators.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from hessian_spectra.curvature.block_builders import parameter_blocks
from hessian_spectra.curvature.block_operators import BlockDiagonalOperator
from hessian_spectra.curvature.blocks import Block
from hessian_spectra.curvature.hessian_products import _HessianProducts
from hessian_spectra.curvature.losses import (
    LossFn,
    batch_size_hint,
    causal_lm_loss,
    is_causal_lm,
    model_loss,
)
from hessian_spectra.errors import InputError
from torch import nn

__all__ = ["HessianOperator", "HESSIAN_MODES"]

HESSIAN_MODES = ("auto", "reuse", "recompute", "fwd_rev", "finite_difference")
DEFAULT_MAX_GRAPH_BYTES = 4 * 2**30
DEFAULT_MAX_MATMAT_BYTES = 2**30


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


class HessianOperator(_HessianProducts):
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

    # ---------------------------------------------------------------- blocks
    def block_diagonal(self, blocks: Sequence[Block] | None = None) -> BlockDiagonalOperator:
        """The block-diagonal operator over ``blocks`` (default: one block per parameter tensor)."""
        return BlockDiagonalOperator(self, list(blocks) if blocks is not None else parameter_blocks(self))
