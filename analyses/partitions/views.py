"""Per-block tensor views of a partition that any optimizer can use: parameters, gradients or optimizer
state (flattened copies mapped back by name) as ``(num_blocks, *block_shape)`` views sharing storage."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from hessian_spectra.analyses.partitions.partition import FALLBACK_RULE, Partition
from hessian_spectra.analyses.partitions.rules import BlockRule, make_rule
from hessian_spectra.errors import InputError


def _row_view(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "flat":
        return t.view(-1)
    if layout == "rows":
        return t
    if layout == "cols":
        return t.transpose(0, 1)
    if layout == "last":
        return t.view(-1, t.shape[-1])
    raise ValueError(f"unknown layout {layout!r}")


def rule_views(rule: BlockRule, tensor: torch.Tensor) -> list[torch.Tensor]:
    """Views of ``tensor`` (shaped like the parameter) as ``(num_blocks, *block_shape)``, one per segment.

    They share storage with ``tensor``: reduce over every dim but the first for one value per
    block; write through them to update in place. ``v.flatten(1)`` gives (num_blocks, block_numel).
    """
    rv = _row_view(tensor, rule.layout)
    return [rv[s.start : s.stop].unflatten(0, (s.num_blocks, s.rows_per_block)) for s in rule.segments]


def unflatten_named(
    partition: Partition, named_tensors: Iterable[tuple[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Map (possibly ZeRO-style flattened 1-D) tensors back to their parameter shapes by name.

    A flattened tensor is re-viewed in the parameter's shape when the name is known and the element
    count matches; names the partition does not know (flat buffers such as ``_flat_param``) and
    partial shards are refused with an InputError, never guessed.
    """
    aliases = partition.model_info.get("tied", {})
    out: dict[str, torch.Tensor] = {}
    for name, t in named_tensors:
        canon = aliases.get(name, name)
        if canon in partition.entries:
            shape = partition.entries[canon].shape
        elif canon in partition.unresolved:
            shape = partition.unresolved_shape(canon)
        else:
            raise InputError(
                name,
                "not a parameter of the partitioned model; flattened buffers (ZeRO/FSDP flat params) carry no "
                "per-tensor names -- gather full parameters (use_orig_params=True / GatheredParameters) first",
            )
        numel = math.prod(shape)
        if tuple(t.shape) != tuple(shape):
            if t.numel() != numel:
                raise InputError(
                    name,
                    f"holds {t.numel()} of the parameter's {numel} elements (a shard of {list(shape)}); "
                    "block views need the whole tensor: gather the shards first",
                )
            try:
                t = t.view(shape)
            except RuntimeError as err:
                raise InputError(
                    name, f"flattened tensor cannot be re-viewed as {list(shape)} ({err})"
                ) from err
        out[canon] = t
    return out


def block_views(
    partition: Partition,
    named_tensors: Iterable[tuple[str, torch.Tensor]],
    unresolved: str = FALLBACK_RULE,
) -> dict[str, list[torch.Tensor]]:
    """Per-parameter block views ``(num_blocks, *block_shape)`` (one per segment) for any optimizer.

    ``named_tensors`` may be ``model.named_parameters()``, the gradients, or optimizer state with the
    same names; flattened copies are mapped back by name (see :func:`unflatten_named`).
    ``unresolved``: "per_coordinate" (plain-Adam views), "skip", or "error".
    """
    if unresolved not in (FALLBACK_RULE, "skip", "error"):
        raise ValueError(f"unresolved must be 'per_coordinate', 'skip' or 'error', not {unresolved!r}")
    out: dict[str, list[torch.Tensor]] = {}
    for name, t in unflatten_named(partition, named_tensors).items():
        rule = partition.entries.get(name)
        if rule is None:
            if unresolved == "skip":
                continue
            if unresolved == "error":
                raise InputError(name, "no block rule (unresolved); run --verify to discover one")
            rule = make_rule(FALLBACK_RULE, "other", tuple(t.shape), "flat", "fallback")
        out[name] = rule_views(rule, t)
    return out
