"""Hessian blocks that need more than parameter names: the Adam-mini partition as spectra blocks.

:func:`adam_mini_blocks` turns the partition of :mod:`hessian_spectra.analyses.partitions.partition` into
:class:`hessian_spectra.curvature.blocks.Block` slices, one per partition block: per-head Q/K row slices (row ranges of a
fused QKV tensor included), one row (output neuron, token, channel) per block for the per-row rules,
whole tensors for norms, one coordinate per block for biases and for tensors no rule resolved (the
partition counts those per coordinate, as plain Adam). :func:`hessian_blocks` is what the report and the
CLI call to get the blocks of ``settings.blocks`` for :func:`hessian_spectra.curvature.probe.run_hessian`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from hessian_spectra.curvature.blocks import AnyBlock, Block
from hessian_spectra.errors import InputError
from torch import nn

__all__ = [
    "AdamMiniBlocks",
    "BlockChoice",
    "adam_mini_blocks",
    "heads_config",
    "hessian_blocks",
    "rule_blocks",
]

#: The name of one block of a rule's segment (``{base}[{label} {k}]``).
_LABELS = {
    "per_head": "head",
    "per_row": "row",
    "per_token": "token",
    "per_channel": "channel",
    "per_expert_row": "row",
    "per_column": "col",
    "per_coordinate": "coord",
}


@dataclass(frozen=True)
class AdamMiniBlocks:
    """The Adam-mini blocks of a model as spectra blocks, the partition's count, and what was done."""

    blocks: tuple[Block, ...]
    partition_blocks: int
    per_tensor: dict[str, int]
    notes: tuple[str, ...]

    @property
    def complete(self) -> bool:
        """True when every partition block is here (no per-tensor cap applied)."""
        return len(self.blocks) == self.partition_blocks


def _seen(shape: tuple[int, ...], layout: str) -> tuple[tuple[int, ...] | None, int]:
    """(view, axis) of a spectra Block that slices the rows of ``layout`` (see hessian_spectra.analyses.partitions.views)."""
    if layout == "rows":
        return None, 0
    if layout == "cols":
        return None, 1
    if layout == "last":
        return (math.prod(shape[:-1]), shape[-1]), 0
    if layout == "flat":
        return (math.prod(shape),), 0
    raise InputError(None, f"unknown partition layout {layout!r}")


def rule_blocks(name: str, rule: Any) -> list[Block]:
    """One :class:`Block` per block of an :class:`hessian_spectra.analyses.partitions.rules.BlockRule` of parameter ``name``.

    A rule with one block over the whole tensor gives the whole tensor; otherwise block ``k`` of a
    segment is rows ``[start + k r, start + (k+1) r)`` of the rule's row view (``r`` rows per block),
    named ``name[head k]`` / ``[row k]`` / ``[token k]`` / ... (``name:q[head k]`` for a fused QKV part).
    """
    shape = tuple(rule.shape)
    if rule.num_blocks == 1:  # segments always cover every row, so one block is the whole tensor
        return [Block(name, name, shape, kind=rule.rule)]
    view, axis = _seen(shape, rule.layout)
    fused = len(rule.segments) > 1
    out: list[Block] = []
    for seg in rule.segments:
        base = f"{name}:{seg.part}" if fused else name
        label = _LABELS.get(seg.rule, seg.rule)
        for k in range(seg.num_blocks):
            a = seg.start + k * seg.rows_per_block
            out.append(
                Block(f"{base}[{label} {k}]", name, shape, axis, a, a + seg.rows_per_block, seg.rule, view)
            )
    return out


def _spaced(n: int, cap: int) -> list[int]:
    """``cap`` indices of ``range(n)`` spread evenly, first and last included."""
    if cap >= n:
        return list(range(n))
    if cap == 1:
        return [0]
    return sorted({round(i * (n - 1) / (cap - 1)) for i in range(cap)})


def adam_mini_blocks(
    model: nn.Module,
    *,
    partition: Any = None,
    params: Any = None,
    max_blocks_per_tensor: int | None = None,
    config: Any = None,
) -> AdamMiniBlocks:
    """The blocks of the Adam-mini partition of ``model`` (:func:`hessian_spectra.analyses.partitions.build.partition_model`,
    or ``partition``) over its trainable parameters (or ``params``), as spectra blocks.

    Per-coordinate rules (biases, unresolved tensors) give one 1x1 block per coordinate: its "spectrum"
    is the diagonal Hessian entry; such blocks count in the scale spread but are too small for the JS
    matrices. ``max_blocks_per_tensor`` keeps that many evenly spaced blocks of a tensor that has more
    (first and last included) and says so in the notes; None keeps every block (one pruned backward per
    block per lockstep step: many thousands of blocks are slow).
    """
    from hessian_spectra.analyses.partitions.build import partition_model
    from hessian_spectra.analyses.partitions.partition import FALLBACK_RULE
    from hessian_spectra.analyses.partitions.rules import make_rule

    if max_blocks_per_tensor is not None and max_blocks_per_tensor < 1:
        raise InputError("--max-blocks-per-tensor", f"must be >= 1, got {max_blocks_per_tensor}")
    part = partition if partition is not None else partition_model(model, config)
    named = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    names = list(params) if params is not None else list(named)
    blocks: list[Block] = []
    per_tensor: dict[str, int] = {}
    total = 0
    capped: list[str] = []
    fallback: list[str] = []
    for name in names:
        if name not in named:
            raise InputError(None, f"unknown parameter {name!r}")
        rule = part.entries.get(name)
        if rule is None:
            fallback.append(name)
            rule = make_rule(FALLBACK_RULE, "other", named[name], "flat", "unresolved: per coordinate")
        if tuple(rule.shape) != named[name]:
            raise InputError(
                None, f"partition shape {tuple(rule.shape)} of {name!r} != parameter {named[name]}"
            )
        mine = rule_blocks(name, rule)
        total += len(mine)
        per_tensor[name] = len(mine)
        if max_blocks_per_tensor is not None and len(mine) > max_blocks_per_tensor:
            capped.append(f"{name} ({max_blocks_per_tensor} of {len(mine)})")
            mine = [mine[i] for i in _spaced(len(mine), max_blocks_per_tensor)]
        blocks.extend(mine)
    notes = [
        f"Adam-mini blocks: {len(blocks)} of the partition's {total} blocks over {len(names)} tensors "
        "(Q/K per head, V/attention output/MLP per output neuron, embeddings and head per token, norms whole, "
        "biases per coordinate: hessian_spectra.analyses.partitions.partition)"
    ]
    if capped:
        notes.append(
            f"max_blocks_per_tensor={max_blocks_per_tensor}: evenly spaced blocks kept (first and last included) "
            "for " + ", ".join(capped)
        )
    if fallback:
        notes.append(
            "no partition rule for " + ", ".join(fallback) + ": one block per coordinate (the partition's "
            "fallback, plain Adam)"
        )
    ones = sum(1 for b in blocks if b.numel == 1)
    if ones:
        notes.append(
            f"{ones} blocks of one coordinate (per-coordinate rules): each spectrum is one diagonal Hessian entry"
        )
    return AdamMiniBlocks(tuple(blocks), total, per_tensor, tuple(notes))


@dataclass(frozen=True)
class BlockChoice:
    """What :func:`hessian_blocks` resolved: explicit blocks (None: let spectra choose), notes, settings."""

    blocks: list[AnyBlock] | None
    notes: tuple[str, ...]
    settings: Any


def hessian_blocks(model: nn.Module, settings: Any) -> BlockChoice:
    """The blocks of ``settings.blocks`` for ``model``: Adam-mini blocks built here, per-head blocks with
    the head count read from the model when ``settings.n_heads`` is unset; tensor and layer blocks are
    left to :func:`hessian_spectra.curvature.probe.choose_blocks` (``blocks=None``)."""
    if not settings.block:
        return BlockChoice(None, (), settings)
    if settings.blocks == "head" and not settings.n_heads:
        from hessian_spectra.analyses.head_structure import attention_heads

        heads = attention_heads(model)
        if not heads:
            raise InputError(
                "--heads", "per-head blocks need the number of attention heads (not in the model)"
            )
        settings = replace(settings, n_heads=heads)
    if settings.blocks != "adam-mini":
        return BlockChoice(None, (), settings)
    config, notes = None, ()
    if getattr(model, "config", None) is None:
        config = heads_config(model, settings.n_heads)
        if config is not None:
            notes = (
                f"no model config: the partition used {config['num_attention_heads']} attention heads of "
                f"head_dim {config['head_dim']} (Q projection rows / heads)",
            )
    am = adam_mini_blocks(
        model, params=settings.params, max_blocks_per_tensor=settings.max_blocks_per_tensor, config=config
    )
    return BlockChoice(list(am.blocks), am.notes + notes, settings)


def heads_config(model: nn.Module, n_heads: int | None = None) -> dict[str, int] | None:
    """A minimal config for the partition of a model without an HF config: the head count (``n_heads``,
    else ``model.n_heads``/``num_heads``) and head_dim = rows of the first Q projection / heads (or of the
    first fused [Q | K | V] projection, e.g. ``nn.MultiheadAttention.in_proj_weight``, / 3 heads)."""
    from hessian_spectra.analyses.head_structure import attention_heads
    from hessian_spectra.weights.roles import tensor_role

    heads = n_heads or attention_heads(model)
    if not heads:
        return None
    for parts in (1, 3):
        for name, p in model.named_parameters():
            if (
                tensor_role(name) == ("q" if parts == 1 else "qkv")
                and p.ndim == 2
                and p.shape[0] % (parts * heads) == 0
            ):
                return {"num_attention_heads": int(heads), "head_dim": int(p.shape[0] // (parts * heads))}
    return None
