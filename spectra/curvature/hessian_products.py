"""Hessian-vector products in each HVP mode, over the first-order graphs the Hessian operator builds:
second backward passes (one vector, or batched in memory-bounded chunks), forward-over-reverse and
central finite differences; how those graphs are built and kept is in
:mod:`hessian_spectra.curvature.hessian`. Design notes: spectra/docs/curvature_operators.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from hessian_spectra.curvature.guards import is_double_backward_error
from hessian_spectra.curvature.operator_base import _CurvatureBase


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


class _HessianProducts(_CurvatureBase):
    """``H V`` for :class:`~hessian_spectra.curvature.hessian.HessianOperator`, one method per HVP mode.

    The subclass provides ``_prepare()`` (resolve the mode; in reuse mode build and keep the graphs),
    ``_for_each_graph(fn)`` (call ``fn(weight, grads, leaves)`` per batch) and the attributes below.
    """

    _mode: str | None
    _batched_ok: bool
    graph_bytes: int | None
    max_matmat_bytes: int
    fd_eps: float

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

    def _stop_batching(self, err: Exception, what: str, instead: str) -> None:
        """After a batched call failed: a double-backward error is a real failure (re-raised); anything
        else turns batching off for this operator, said in its notes."""
        if is_double_backward_error(err):
            raise err
        self._batched_ok = False
        self.notes.append(f"{what} failed ({err!s:.120}); {instead}")

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
                self._stop_batching(err, "batched backward (is_grads_batched)", "looping over vectors")
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
                        self._stop_batching(err, "vmap over jvp", "looping over vectors")
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
