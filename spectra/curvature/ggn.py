"""The generalised Gauss-Newton operator ``G = J^T H_out J`` of the weighted mean loss and how the model
output and target are taken for it (closed-form output Hessians of cross-entropy and MSE); it shares
only the base plumbing with the Hessian. Design notes: spectra/docs/curvature_operators.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from hessian_spectra.curvature.losses import IGNORE_INDEX, _logits, _split_xy, is_causal_lm
from hessian_spectra.curvature.operator_base import _CurvatureBase
from hessian_spectra.errors import InputError
from torch import nn

__all__ = ["GGNOperator", "GGN_LOSSES", "output_and_target"]

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
