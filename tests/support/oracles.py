"""Exact dense curvature matrices for tiny models (the truth every matrix-free result is tested against).

``exact_hessian`` differentiates the weighted mean loss ``sum_b w_b L_b(theta) / sum_b w_b`` as a
function of ONE flat float64 parameter vector with ``torch.func.jacfwd(torch.func.grad(f))``
(forward-over-reverse on a ``functional_call``), on a private float64 copy in eval mode with twice-differentiable attention.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from hessian_spectra.curvature.losses import cast_floating, model_loss
from torch import nn
from torch.func import functional_call


def _prepare(model: nn.Module, params: Sequence[str] | None, dtype: torch.dtype):
    m = copy.deepcopy(model).to(dtype).eval()
    for mod in m.modules():  # eager attention on the copy (HF); SDPA runs under the MATH backend below
        cfg = getattr(mod, "config", None)
        impl = getattr(cfg, "_attn_implementation", None) if cfg is not None else None
        if impl not in (None, "eager") and hasattr(mod, "set_attn_implementation"):
            mod.set_attn_implementation("eager")
    named = dict(m.named_parameters())
    names = list(params) if params is not None else [n for n, p in named.items() if p.requires_grad]
    shapes = [named[n].shape for n in names]
    theta = torch.cat([named[n].detach().reshape(-1) for n in names])
    frozen = {n: p.detach() for n, p in named.items() if n not in set(names)}
    return m, names, shapes, theta, frozen


def _unflatten(theta: torch.Tensor, names, shapes) -> dict[str, torch.Tensor]:
    out, a = {}, 0
    for n, s in zip(names, shapes, strict=True):
        k = math.prod(s)
        out[n] = theta[a : a + k].view(s)
        a += k
    return out


def _weights(batches: Sequence[Any], weights: Sequence[float] | None) -> list[float]:
    if weights is not None:
        return [float(w) for w in weights]
    out = []
    for b in batches:
        t = b if isinstance(b, torch.Tensor) else (b["input_ids"] if isinstance(b, dict) else b[0])
        out.append(float(t.shape[0]))
    return out


def _math_sdpa():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


class _Call(nn.Module):
    """``fn(model, batch)`` as a module, so ``functional_call`` can swap the model's parameters."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, Any], Any]) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, batch: Any) -> Any:
        return self.fn(self.model, batch)


def exact_hessian(
    model: nn.Module,
    batches: Sequence[Any],
    loss: Callable[[nn.Module, Any], torch.Tensor] | None,
    params: Sequence[str] | None = None,
    dtype: torch.dtype = torch.float64,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Dense Hessian of the weighted mean loss w.r.t. the flat parameter vector (``params`` order)."""
    loss = loss or model_loss
    m, names, shapes, theta, frozen = _prepare(model, params, dtype)
    batches = [cast_floating(b, dtype) for b in batches]
    w = _weights(batches, weights)
    W = sum(w)

    wrap = _Call(m, loss)

    def f(th: torch.Tensor) -> torch.Tensor:
        d = {f"model.{k}": v for k, v in frozen.items()}
        d.update({f"model.{k}": v for k, v in _unflatten(th, names, shapes).items()})
        total = th.new_zeros(())
        for b, wb in zip(batches, w, strict=True):
            if wb > 0:
                total = total + wb * functional_call(wrap, d, (b,))
        return total / W

    with _math_sdpa():
        try:
            # jacfwd(grad), NOT torch.func.hessian = jacfwd(jacrev): in torch 2.13 the nested vmap of
            # jacrev gets the LayerNorm weight/input cross terms wrong (tests/test_operators.py pins this).
            H = torch.func.jacfwd(torch.func.grad(f))(theta)
        except (
            RuntimeError,
            NotImplementedError,
        ):  # a forward-AD gap in some op: row-by-row reverse-over-reverse
            H = torch.autograd.functional.hessian(f, theta)
    return 0.5 * (H + H.T)


def exact_ggn(
    model: nn.Module,
    batches: Sequence[Any],
    forward: Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor]],
    output_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    params: Sequence[str] | None = None,
    dtype: torch.dtype = torch.float64,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Dense ``sum_b w_b J_b^T H_b J_b / sum_b w_b`` with J from ``torch.func.jacrev`` and H the output Hessian."""
    m, names, shapes, theta, frozen = _prepare(model, params, dtype)
    batches = [cast_floating(b, dtype) for b in batches]
    w = _weights(batches, weights)
    W = sum(w)

    wrap = _Call(m, forward)
    G = torch.zeros(theta.numel(), theta.numel(), dtype=dtype)
    with _math_sdpa():
        for b, wb in zip(batches, w, strict=True):
            if wb == 0:
                continue

            def out(th: torch.Tensor, b: Any = b) -> torch.Tensor:
                d = {f"model.{k}": v for k, v in frozen.items()}
                d.update({f"model.{k}": v for k, v in _unflatten(th, names, shapes).items()})
                return functional_call(wrap, d, (b,))[0]

            z = out(theta).detach()
            y = forward(m, b)[1]
            J = torch.func.jacrev(out)(theta).reshape(z.numel(), -1)
            Hz = torch.func.jacfwd(
                torch.func.grad(lambda zz, y=y, shape=z.shape: output_loss(zz.view(shape), y))
            )(z.reshape(-1))
            G += wb * (J.T @ Hz @ J)
    return G / W


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / max(||b||, tiny)."""
    return float((a - b).norm() / max(float(b.norm()), 1e-300))


_HESSIANS: dict[str, torch.Tensor] = {}


def case_hessian(name: str) -> torch.Tensor:
    """Cached float64 exact Hessian of a zoo case (HF cases use the float64 shifted CE, not HF's float32 loss)."""
    from hessian_spectra.curvature.losses import causal_lm_loss

    from support.models import get_case

    if name not in _HESSIANS:
        c = get_case(name)
        _HESSIANS[name] = exact_hessian(c.model, c.batches, c.loss or causal_lm_loss, weights=c.weights)
    return _HESSIANS[name]


def planted_symmetric(lam: Any, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Q diag(lam) Q^T with a Haar-ish random Q, built in float64 then cast: a matrix of known spectrum."""
    import numpy as np

    lam = torch.as_tensor(np.asarray(lam, dtype=np.float64))
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(lam.numel(), lam.numel(), generator=g, dtype=torch.float64))
    a = q @ torch.diag(lam) @ q.T
    return ((a + a.T) / 2).to(dtype)


def planted_singular(s: Any, n: int, m: int, seed: int = 0) -> torch.Tensor:
    """U diag(s) V^T with random orthonormal U (n x k), V (m x k), k = len(s), in float64: known singular values."""
    import numpy as np

    rng = np.random.default_rng(seed)
    k = len(s)
    u, _ = np.linalg.qr(rng.standard_normal((n, k)))
    v, _ = np.linalg.qr(rng.standard_normal((m, k)))
    return torch.from_numpy((u * s) @ v.T)
