"""Optimizer state found beside the weights: listed in the inventory, and Adam's second moments as a
per-tensor diagonal-curvature proxy.

``Optimizer.state_dict()`` names parameters by position (``param_groups[g]["params"]`` are integers in the
order of ``model.parameters()``), not by name. :func:`map_parameters` recovers names: exactly from
``param_groups[g]["param_names"]`` when the optimizer was built from ``named_parameters()``; otherwise by
position against the state dict's floating-point tensors (all of them, or all but known buffer names such
as ``running_mean``, when the shapes agree one to one); else by a subsequence match on shapes, accepted only
when the leftmost and rightmost matches agree (the assignment is unique); else it says why it cannot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hessian_spectra.checkpoints.base import TensorMeta, _dtype_name

__all__ = ["optimizer_metas", "map_parameters", "second_moments", "ParameterMap", "BUFFER_LEAVES"]

#: state-dict leaves that are buffers, never parameters (BatchNorm statistics, rotary and position tables)
BUFFER_LEAVES = frozenset({
    "running_mean", "running_var", "num_batches_tracked", "inv_freq", "position_ids", "masked_bias",
    "relative_position_index", "_float_tensor",
})  # fmt: skip


def _params(opt: dict) -> list[int]:
    out: list[int] = []
    for group in opt.get("param_groups", []):
        ids = group.get("params", []) if isinstance(group, dict) else []
        out.extend(i for i in ids if isinstance(i, int) and not isinstance(i, bool))
    return out


def _slots(opt: dict) -> list[tuple[Any, str, Any]]:
    """(param id, slot name, tensor) for every tensor in ``opt["state"]``, in state order."""
    import torch

    out = []
    for pid, entry in opt["state"].items():
        if isinstance(entry, dict):
            out.extend((pid, str(k), v) for k, v in entry.items() if isinstance(v, torch.Tensor))
    return out


def optimizer_metas(
    optimizers: Sequence[tuple[str, dict]], file: str, names: dict[int, str] | None = None
) -> list[TensorMeta]:
    """Inventory rows for every optimizer tensor, each skipped with the reason "optimizer state"."""
    metas = []
    for key, opt in optimizers:
        for pid, slot, t in _slots(opt):
            try:
                shape = tuple(int(s) for s in t.shape)
            except Exception:
                shape = ()
            owner = f" of {names[pid]}" if names and pid in names else f" of parameter {pid}"
            full = f"{key}/state/{pid}/{slot}"
            metas.append(
                TensorMeta(
                    full,
                    shape,
                    _dtype_name(t.dtype),
                    file,
                    key=full,
                    skip=f"optimizer state ({slot}{owner}); not a weight",
                )
            )
    return metas


@dataclass(frozen=True)
class ParameterMap:
    """Optimizer parameter position -> state-dict name, and how it was decided (or why it was not)."""

    names: dict[int, str]
    method: str  # "param_names" | "order" | "order and shape" | "none"
    note: str


def map_parameters(opt: dict, weights: dict[str, Any]) -> ParameterMap:
    """Names for the optimizer's parameters (see the module docstring)."""
    ids = _params(opt)
    groups = [g for g in opt.get("param_groups", []) if isinstance(g, dict)]
    if groups and all(
        isinstance(g.get("param_names"), list) and len(g["param_names"]) == len(g.get("params", []))
        for g in groups
    ):
        names = [str(n) for g in groups for n in g["param_names"]]
        return ParameterMap(
            dict(zip(ids, names, strict=True)), "param_names", "names stored by the optimizer (param_names)"
        )
    cands = [(n, tuple(t.shape)) for n, t in weights.items() if _is_float(t)]
    shapes = [_state_shape(opt, i) for i in ids]
    named = [c for c in cands if c[0].rsplit(".", 1)[-1] not in BUFFER_LEAVES]
    for pool, how in ((cands, "every floating-point tensor of the state dict is a parameter"),
                      (named, f"buffers excluded by name ({len(cands) - len(named)} of them)")):  # fmt: skip
        if len(pool) == len(ids) and all(s is None or s == c[1] for s, c in zip(shapes, pool, strict=True)):
            return ParameterMap(
                {i: c[0] for i, c in zip(ids, pool, strict=True)},
                "order",
                f"by position: {how}; shapes agree",
            )
    for pool in (named, cands):
        match = _unique_match(shapes, [c[1] for c in pool])
        if match is not None:
            return ParameterMap(
                {i: pool[j][0] for i, j in zip(ids, match, strict=True)}, "order and shape",
                f"by position and shape, {len(pool) - len(ids)} floating-point tensors of the state dict are not "
                "parameters (buffers or tied copies); the match is unique",
            )  # fmt: skip
    return ParameterMap(
        {}, "none",
        f"not mapped to names: the optimizer lists {len(ids)} parameters by position and the state dict's "
        f"{len(cands)} floating-point tensors do not line up with them in exactly one way",
    )  # fmt: skip


def _unique_match(shapes: list, cands: list) -> list[int] | None:
    """The subsequence match of ``shapes`` into ``cands`` when it is the only one (leftmost == rightmost)."""
    left = _match(shapes, cands)
    right = _match(shapes[::-1], cands[::-1])
    if left is None or right is None:
        return None
    right = [len(cands) - 1 - j for j in right[::-1]]
    return left if left == right else None


def _is_float(t: Any) -> bool:
    try:
        return bool(t.is_floating_point())
    except Exception:
        return False


def _state_shape(opt: dict, pid: int) -> tuple[int, ...] | None:
    import torch

    entry = opt["state"].get(pid)
    if isinstance(entry, dict):
        for slot in ("exp_avg_sq", "exp_avg", "momentum_buffer", "square_avg", "sum"):
            t = entry.get(slot)
            if isinstance(t, torch.Tensor):
                return tuple(t.shape)
    return None


def _match(shapes: list, cands: list) -> list[int] | None:
    """Leftmost subsequence match of ``shapes`` (None matches anything) into ``cands``; None if impossible."""
    out, j = [], 0
    for s in shapes:
        while j < len(cands) and s is not None and cands[j] != s:
            j += 1
        if j >= len(cands):
            return None
        out.append(j)
        j += 1
    return out


def second_moments(optimizers: Sequence[tuple[str, dict]], weights: dict[str, Any]) -> dict[str, Any] | None:
    """Per parameter, Adam's bias-corrected second moment ``v / (1 - beta2^step)`` summarised (mean, max and
    ``rms_grad = sqrt(mean)``): an estimate of E[g^2], the diagonal of the empirical Fisher. None when no
    optimizer holds ``exp_avg_sq``."""
    import torch

    out = []
    for key, opt in optimizers:
        pmap = map_parameters(opt, weights)
        betas = {}
        for group in opt.get("param_groups", []):
            b = group.get("betas") if isinstance(group, dict) else None
            for pid in group.get("params", []) if isinstance(group, dict) else []:
                betas[pid] = b
        rows = []
        for pid, entry in opt["state"].items():
            v = entry.get("exp_avg_sq") if isinstance(entry, dict) else None
            if not isinstance(v, torch.Tensor) or v.layout != torch.strided or v.device.type == "meta":
                continue
            step = entry.get("step")
            step = (
                float(step)
                if isinstance(step, int | float | torch.Tensor) and torch.as_tensor(step).numel() == 1
                else None
            )
            b = betas.get(pid)
            beta2 = float(b[1]) if isinstance(b, list | tuple) and len(b) == 2 else None
            corr = 1.0 - beta2**step if step and beta2 is not None and 0 <= beta2 < 1 else None
            vv = v.detach().to(torch.float64)
            mean, vmax = (
                float(vv.mean()) if vv.numel() else math.nan,
                float(vv.max()) if vv.numel() else math.nan,
            )
            if corr:
                mean, vmax = mean / corr, vmax / corr
            rows.append({
                "param_index": int(pid) if isinstance(pid, int) else str(pid), "name": pmap.names.get(pid),
                "shape": list(v.shape), "step": step, "beta2": beta2, "bias_corrected": bool(corr),
                "v_mean": mean, "v_max": vmax, "rms_grad": math.sqrt(mean) if mean >= 0 else None,
            })  # fmt: skip
        if rows:
            out.append({"entry": key, "mapping": pmap.method, "mapping_note": pmap.note, "parameters": rows})
    if not out:
        return None
    return {
        "what": "Adam second moments per parameter tensor: v_hat = exp_avg_sq / (1 - beta2^step), an estimate of "
        "E[g^2] (diagonal empirical Fisher), a diagonal-curvature proxy; rms_grad = sqrt(mean v_hat)",
        "optimizers": out,
    }
