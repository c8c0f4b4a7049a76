"""Is the attention Hessian block-diagonal by head? Per-head mass share of Q/K/V/O Hessian blocks.

For each attention projection, the share of the squared Frobenius mass of its diagonal Hessian block
that lies inside per-head sub-blocks (rows of one head for Q/K/V in ``nn.Linear`` ``(out, in)`` layout,
columns of one head for the output projection; transposed for GPT-2's ``Conv1D``), against random
partitions with the same block sizes (:mod:`hessian_spectra.analyses.structure` does the counting). Columns of the
block are exact Hessian-vector products: all of them when the tensor has at most ``max_columns``
coordinates (``exact=True``), else whole heads sampled at random (an estimate, flagged).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from hessian_spectra.analyses.structure import _pick_columns, mass_share, random_shares
from hessian_spectra.io import json_safe
from torch import nn

__all__ = [
    "HeadCheck",
    "HeadStructureReport",
    "head_labels",
    "attention_heads",
    "head_columns",
    "head_structure",
]

#: Roles checked and the axis (in nn.Linear layout) along which heads are laid out.
HEAD_AXIS = {"q": 0, "k": 0, "v": 0, "qkv": 0, "attn_out": 1}


@dataclass(frozen=True)
class HeadCheck:
    """One tensor: per-head mass share vs random partitions of the same sizes."""

    name: str
    role: str
    n_heads: int
    share: float
    random_mean: float
    random_std: float
    exact: bool
    columns: int

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


@dataclass(frozen=True)
class HeadStructureReport:
    """Per-tensor checks and per-role pooled means (Q/K are expected head-diagonal, V/O are not)."""

    tensors: tuple[HeadCheck, ...]
    n_heads: int | None
    settings: dict[str, Any] = field(default_factory=dict)
    num_hvps: int = 0
    notes: tuple[str, ...] = ()

    def by_role(self) -> dict[str, dict[str, float]]:
        """Mean share and mean random share per role."""
        out: dict[str, dict[str, float]] = {}
        for role in sorted({t.role for t in self.tensors}):
            ts = [t for t in self.tensors if t.role == role]
            out[role] = {
                "tensors": len(ts),
                "share": sum(t.share for t in ts) / len(ts),
                "random_share": sum(t.random_mean for t in ts) / len(ts),
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        return json_safe(
            {
                "kind": "per-head mass share",
                "n_heads": self.n_heads,
                "settings": self.settings,
                "num_hvps": self.num_hvps,
                "notes": list(self.notes),
                "by_role": self.by_role(),
                "tensors": [t.to_dict() for t in self.tensors],
            }
        )


def head_labels(shape: Sequence[int], n_heads: int, axis: int) -> torch.Tensor:
    """Head id of every coordinate of a 2-D tensor (flat row-major order), heads contiguous along ``axis``."""
    rows, cols = int(shape[0]), int(shape[1])
    n = shape[axis]
    size = n // n_heads
    if axis == 0:
        return (torch.arange(rows) // size)[:, None].expand(rows, cols).reshape(-1).clone()
    return (torch.arange(cols) // size)[None, :].expand(rows, cols).reshape(-1).clone()


def attention_heads(model: nn.Module) -> int | None:
    """Number of attention heads from ``model.n_heads`` or an HF config (``num_attention_heads``/``n_head``)."""
    for key in ("n_heads", "num_heads"):
        v = getattr(model, key, None)
        if isinstance(v, int) and v > 0:
            return v
    cfg = getattr(model, "config", None)
    for key in ("num_attention_heads", "n_head", "num_heads"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _module_types(model: nn.Module) -> dict[str, str]:
    out = {}
    for mname, mod in model.named_modules():
        for pname, _ in mod.named_parameters(recurse=False):
            out[f"{mname}.{pname}" if mname else pname] = type(mod).__name__
    return out


def _targets(model: nn.Module, n_heads: int, params: Sequence[str] | None, notes: list[str]) -> list[tuple]:
    """The projections the head check reads: ``(index, name, parameter, role, head labels, heads)``;
    tensors not divisible into heads are noted in ``notes``."""
    from hessian_spectra.weights.roles import tensor_role

    types = _module_types(model)
    named = dict(model.named_parameters())
    out = []
    for i, name in enumerate(list(params) if params is not None else list(named)):
        p = named[name]
        role = tensor_role(name, module_type=types.get(name))
        if role not in HEAD_AXIS or p.ndim != 2 or not p.requires_grad:
            continue
        axis = HEAD_AXIS[role]
        if types.get(name) == "Conv1D":  # GPT-2 stores (in, out)
            axis = 1 - axis
        heads = n_heads * (3 if role == "qkv" else 1)
        if p.shape[axis] % heads:
            notes.append(f"{name}: axis {axis} of length {p.shape[axis]} not divisible into {heads} heads")
            continue
        out.append((i, name, p, role, head_labels(tuple(p.shape), heads, axis), heads))
    return out


def head_columns(
    model: nn.Module,
    n_heads: int,
    *,
    params: Sequence[str] | None = None,
    max_columns: int = 1024,
    seed: int = 0,
) -> list[tuple[int, int]]:
    """``(numel, columns)`` of every tensor :func:`head_structure` would check (the same columns): its cost
    for the plan before the work."""
    return [
        (p.numel(), int(_pick_columns(labels, max_columns, seed + i)[0].numel()))
        for i, _, p, _, labels, _ in _targets(model, n_heads, params, [])
    ]


def head_structure(
    model: nn.Module,
    batches: Any,
    loss: Callable[[nn.Module, Any], torch.Tensor] | None,
    n_heads: int,
    *,
    params: Sequence[str] | None = None,
    max_columns: int = 1024,
    n_random: int = 20,
    dtype: torch.dtype | None = None,
    seed: int = 0,
) -> HeadStructureReport:
    """Per-head mass share of every recognised attention projection (see the module docstring)."""
    from hessian_spectra.curvature.hessian import HessianOperator

    checks: list[HeadCheck] = []
    notes: list[str] = []
    hvps = 0
    for i, name, _p, role, labels, heads in _targets(model, n_heads, params, notes):
        cols, exact = _pick_columns(labels, max_columns, seed + i)
        op = HessianOperator(model, batches, loss, params=[name], dtype=dtype)
        E = torch.zeros(op.dim, cols.numel(), dtype=op.dtype, device=op.device)
        E[cols.to(op.device), torch.arange(cols.numel(), device=op.device)] = 1.0
        H_cols = op.matmat(E).detach().to("cpu", torch.float64)
        hvps += cols.numel()
        share = mass_share(H_cols, cols, labels)
        rnd = random_shares(H_cols, cols, labels, n_random, seed + i)
        checks.append(
            HeadCheck(
                name, "qk" if role in ("q", "k") else role, heads, share, float(rnd.mean()),
                float(rnd.std()) if n_random > 1 else 0.0, exact, int(cols.numel()),
            )
        )  # fmt: skip
    if not checks:
        notes.append("no attention projection recognised by name (q/k/v/o or fused qkv)")
    settings = {"max_columns": max_columns, "n_random": n_random, "seed": seed, "dtype": str(dtype)}
    return HeadStructureReport(tuple(checks), n_heads, settings, hvps, tuple(notes))
