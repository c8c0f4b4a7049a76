"""Edge-of-stability references for a training run: the sharpness threshold the optimizer's own update
rule implies, and the preconditioned Hessian of Adam whose top eigenvalue is compared with it.

Every threshold is the step-size limit of the optimizer on a quadratic with curvature ``a`` (iteration
stable iff ``a`` is below it), read off its actual torch update rule (weight decay ignored: it adds
``lambda`` to the curvature of coupled L2, and shrinks the weights under decoupled decay):

* SGD, ``theta -= lr g``: ``a < 2 / lr`` (Cohen et al. 2021, "Gradient Descent on Neural Networks
  Typically Occurs at the Edge of Stability").
* SGD with heavy-ball momentum beta and dampening d (torch: ``buf = beta buf + (1-d) g``,
  ``theta -= lr buf``): ``a < (2 + 2 beta) / ((1 - d) lr)``; Nesterov: ``(2 + 2 beta) / ((1 + 2 beta)(1 - d) lr)``
  (Cohen et al. 2021, appendix on momentum).
* Adam/AdamW: torch's step is ``theta -= P^-1 m`` with m the EMA of gradients (weight 1 - beta1) and
  ``P = (1 - beta1^t) diag(sqrt(v_hat) + eps) / lr``; with P frozen this is EMA momentum on
  ``P^-1 H``, stable iff ``lambda_max(P^-1 H) < (2 + 2 beta1) / (1 - beta1)`` (38 at beta1 = 0.9).
  Dividing both sides by lr gives Cohen et al. 2022's form ("Adaptive Gradient Methods at the Edge of
  Stability": preconditioned sharpness against 38/lr) for a single learning rate; the form used here
  also covers parameter groups with different learning rates. ``lambda_max(P^-1 H)`` is computed as the
  top eigenvalue of the symmetric ``P^-1/2 H P^-1/2`` (same eigenvalues).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from hessian_spectra.errors import InputError

__all__ = [
    "StabilityReference",
    "stability_reference",
    "unwrap_optimizer",
    "adam_preconditioner",
    "PreconditionedOperator",
]

_ADAM = ("Adam", "AdamW", "NAdam", "RAdam")


@dataclass(frozen=True)
class StabilityReference:
    """The sharpness threshold of one optimizer state.

    ``two_over_lr`` is always 2/lr (the plain-GD reference, None without a learning rate). ``threshold``
    applies to ``on``: ``"lambda_max"`` (the Hessian) or ``"preconditioned_lambda_max"`` (Adam's
    P^-1 H, dimensionless); ``formula`` and ``source`` say where it comes from.
    """

    optimizer: str
    lr: float | None
    two_over_lr: float | None
    threshold: float | None
    on: str
    formula: str
    source: str
    params: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _group_value(groups: Sequence[dict[str, Any]], key: str, what: str) -> Any:
    values = {repr(g.get(key)) for g in groups}
    if len(values) != 1:
        raise InputError(None, f"parameter groups use different {what} ({', '.join(sorted(values))})")
    return groups[0].get(key)


def _lr(groups: Sequence[dict[str, Any]]) -> float | None:
    """One learning rate, or None when the groups differ (then only the Adam form is defined)."""
    lrs = {float(g["lr"]) for g in groups if "lr" in g}
    return lrs.pop() if len(lrs) == 1 else None


def unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside wrappers that keep it as ``.optimizer`` (accelerate, HF Trainer)."""
    for _ in range(5):
        inner = getattr(optimizer, "optimizer", None)
        if inner is None or not hasattr(inner, "param_groups"):
            break
        optimizer = inner
    return optimizer


def stability_reference(optimizer: Any = None, lr: float | None = None) -> StabilityReference:
    """The edge-of-stability threshold for ``optimizer`` (a torch optimizer, possibly wrapped, or None:
    plain GD at ``lr``). Unknown optimizers get the plain 2/lr reference with ``threshold`` None (their
    stability limit is not derived here).
    """
    if optimizer is None:
        if lr is None or not (math.isfinite(lr) and lr > 0):
            return StabilityReference("none", None, None, None, "lambda_max", "", "", {})
        return StabilityReference(
            "gd", lr, 2.0 / lr, 2.0 / lr, "lambda_max", "2 / lr", "Cohen et al. 2021 (edge of stability)", {}
        )
    optimizer = unwrap_optimizer(optimizer)
    groups = list(getattr(optimizer, "param_groups", []))
    if not groups:
        raise InputError(None, f"{type(optimizer).__name__} has no parameter groups")
    name = type(optimizer).__name__
    lr = _lr(groups) if lr is None else float(lr)
    two = 2.0 / lr if lr else None
    if name in _ADAM:
        beta1 = float(_group_value(groups, "betas", "betas")[0])
        return StabilityReference(
            name, lr, two, (2.0 + 2.0 * beta1) / (1.0 - beta1), "preconditioned_lambda_max",
            "lambda_max(P^-1 H) < (2 + 2 beta1) / (1 - beta1), P = (1 - beta1^t) diag(sqrt(v_hat) + eps) / lr",
            "Cohen et al. 2022 (adaptive gradient methods at the edge of stability), torch's Adam step",
            {"beta1": beta1},
        )  # fmt: skip
    if name == "SGD":
        beta = float(_group_value(groups, "momentum", "momentum") or 0.0)
        damp = float(_group_value(groups, "dampening", "dampening") or 0.0)
        nesterov = bool(_group_value(groups, "nesterov", "nesterov"))
        if lr is None:
            raise InputError(None, "SGD parameter groups use different learning rates: no single threshold")
        if beta == 0.0:
            return StabilityReference(name, lr, two, two, "lambda_max", "2 / lr", "Cohen et al. 2021", {})
        scale = (1.0 + 2.0 * beta) if nesterov else 1.0
        formula = "(2 + 2 beta) / ((1 + 2 beta)(1 - d) lr)" if nesterov else "(2 + 2 beta) / ((1 - d) lr)"
        return StabilityReference(
            name, lr, two, (2.0 + 2.0 * beta) / (scale * (1.0 - damp) * lr), "lambda_max", formula,
            "Cohen et al. 2021 (momentum appendix), torch's SGD step",
            {"momentum": beta, "dampening": damp, "nesterov": nesterov},
        )  # fmt: skip
    return StabilityReference(
        name, lr, two, None, "lambda_max", "", "no threshold derived for this optimizer", {}
    )


def adam_preconditioner(optimizer: Any, params: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """The flat diagonal of P = (1 - beta1^t) (sqrt(v_hat) + eps) / lr for ``params`` (in order), from
    an Adam-family optimizer's state; None until every parameter has a second moment (first step)."""
    optimizer = unwrap_optimizer(optimizer)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    pieces = []
    for p in params:
        g, state = group_of.get(id(p)), optimizer.state.get(p, {})
        if g is None or "exp_avg_sq" not in state:
            return None
        beta1, beta2 = (float(b) for b in g["betas"])
        t = float(state["step"]) if "step" in state else 0.0
        if t < 1:
            return None
        v_hat = state["exp_avg_sq"].detach().to(torch.float64) / (1.0 - beta2**t)
        if g.get("amsgrad") and "max_exp_avg_sq" in state:
            v_hat = state["max_exp_avg_sq"].detach().to(torch.float64) / (1.0 - beta2**t)
        d = (1.0 - beta1**t) * (v_hat.sqrt() + float(g["eps"])) / float(g["lr"])
        pieces.append(d.reshape(-1).cpu())
    return torch.cat(pieces) if pieces else None


class PreconditionedOperator:
    """``P^-1/2 H P^-1/2`` for a diagonal ``P`` (flat, positive): same eigenvalues as ``P^-1 H``."""

    def __init__(self, op: Any, diagonal: torch.Tensor):
        if diagonal.shape != (op.dim,):
            raise InputError(None, f"preconditioner has {diagonal.numel()} entries, the operator {op.dim}")
        if not bool((diagonal > 0).all()):
            raise InputError(None, "preconditioner diagonal must be positive")
        self.op = op
        self.dim, self.dtype, self.device = op.dim, op.dtype, op.device
        self._scale = diagonal.rsqrt().to(device=op.device, dtype=op.dtype)

    @property
    def num_matvecs(self) -> int:
        return self.op.num_matvecs

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self._scale * self.op.matvec(self._scale * v.to(self.dtype))
