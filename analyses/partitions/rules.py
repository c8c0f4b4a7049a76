"""Architecture rules: which parameter gets which Adam-mini style block partition, and why.

A *block* is a set of coordinates that share one second-moment value. Every tensor is first seen
as a stack of *rows* (output units) through a ``layout``; a rule then groups consecutive rows into
blocks, possibly with different groupings for different parts of a fused tensor (``Segment``).

Documented rules for the parameters that are not weight matrices:

* norm weights (LayerNorm / RMSNorm / GroupNorm / BatchNorm scales): ``whole`` -- one value per
  tensor, the Adam-mini default for norms (a norm scale acts on every coordinate alike);
* biases and any other 1-D / 0-D vector of unknown role: ``per_coordinate`` -- plain Adam. They are a
  negligible share of the parameters, so grouping them saves nothing, and per-coordinate is never a
  silent lump.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hessian_spectra.checkpoints.matrices import CONV1D_MODEL_TYPES

#: Rules a block can follow (``fused_qkv`` mixes per_head and per_row segments).
RULES = (
    "per_head",
    "per_row",
    "per_token",
    "per_channel",
    "per_expert_row",
    "per_column",
    "whole",
    "per_coordinate",
    "fused_qkv",
)

#: How a tensor is seen as a stack of rows before blocks are formed (see ``row_view``).
LAYOUTS = ("rows", "cols", "last", "flat")


@dataclass(frozen=True)
class ArchInfo:
    """Attention geometry and layout facts read from a model config (all optional)."""

    model_type: str | None = None
    hidden_size: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    conv1d: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "conv1d_layout": self.conv1d,
        }


def _cfg_get(config: Any, *keys: str) -> Any:
    for key in keys:
        value = config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)
        if value is not None:
            return value
    return None


def arch_info(config: Any | None) -> ArchInfo:
    """Read heads / kv heads / head_dim / hidden size from an HF config object or a plain dict."""
    if config is None:
        return ArchInfo()
    if not isinstance(config, Mapping) and hasattr(config, "get_text_config"):
        with contextlib.suppress(Exception):  # older configs: keep the config itself
            config = config.get_text_config()
    model_type = _cfg_get(config, "model_type")
    hidden = _cfg_get(config, "hidden_size", "n_embd", "d_model", "dim", "embed_dim")
    heads = _cfg_get(config, "num_attention_heads", "n_head", "n_heads", "num_heads")
    kv = _cfg_get(config, "num_key_value_heads", "n_kv_heads", "num_kv_heads", "n_query_groups")
    head_dim = _cfg_get(config, "head_dim", "attention_head_size", "kv_channels")
    if heads is not None and kv is None:
        kv = heads
    if head_dim is None and hidden and heads:
        head_dim = hidden // heads if hidden % heads == 0 else None
    return ArchInfo(
        model_type=model_type,
        hidden_size=None if hidden is None else int(hidden),
        num_heads=None if heads is None else int(heads),
        num_kv_heads=None if kv is None else int(kv),
        head_dim=None if head_dim is None else int(head_dim),
        conv1d=model_type in CONV1D_MODEL_TYPES,
    )


@dataclass(frozen=True)
class Segment:
    """Rows ``[start, stop)`` of the row view, cut into blocks of ``rows_per_block`` rows."""

    part: str
    rule: str
    start: int
    stop: int
    rows_per_block: int
    row_shape: tuple[int, ...]

    @property
    def num_blocks(self) -> int:
        return (self.stop - self.start) // self.rows_per_block

    @property
    def block_shape(self) -> tuple[int, ...]:
        return (self.rows_per_block, *self.row_shape)

    @property
    def block_numel(self) -> int:
        return math.prod(self.block_shape)

    def to_dict(self) -> dict[str, Any]:
        return {
            "part": self.part,
            "rule": self.rule,
            "rows": [self.start, self.stop],
            "rows_per_block": self.rows_per_block,
            "block_shape": list(self.block_shape),
            "num_blocks": self.num_blocks,
        }


@dataclass(frozen=True)
class BlockRule:
    """How one parameter tensor is cut into blocks that each get one second-moment value."""

    rule: str
    role: str
    shape: tuple[int, ...]
    layout: str
    segments: tuple[Segment, ...]
    reason: str
    evidence: dict[str, Any] | None = None

    @property
    def num_blocks(self) -> int:
        return sum(s.num_blocks for s in self.segments)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def block_shape(self) -> tuple[int, ...] | list[tuple[int, ...]]:
        """One shape when all blocks are alike, else one shape per segment."""
        shapes = [s.block_shape for s in self.segments]
        return shapes[0] if len(set(shapes)) == 1 else shapes

    def to_dict(self) -> dict[str, Any]:
        bs = self.block_shape
        return {
            "rule": self.rule,
            "role": self.role,
            "shape": list(self.shape),
            "layout": self.layout,
            "block_shape": list(bs) if isinstance(bs, tuple) else [list(b) for b in bs],
            "num_blocks": self.num_blocks,
            "segments": [s.to_dict() for s in self.segments],
            "reason": self.reason,
            "evidence": self.evidence,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BlockRule:
        segs = tuple(
            Segment(
                part=s["part"],
                rule=s["rule"],
                start=int(s["rows"][0]),
                stop=int(s["rows"][1]),
                rows_per_block=int(s["rows_per_block"]),
                row_shape=tuple(int(x) for x in s["block_shape"][1:]),
            )
            for s in d["segments"]
        )
        return cls(
            rule=d["rule"],
            role=d["role"],
            shape=tuple(int(x) for x in d["shape"]),
            layout=d["layout"],
            segments=segs,
            reason=d["reason"],
            evidence=d.get("evidence"),
        )


def row_shape(shape: tuple[int, ...], layout: str) -> tuple[int, tuple[int, ...]]:
    """Number of rows and the shape of one row for ``shape`` seen through ``layout``."""
    if layout == "flat":
        return math.prod(shape), ()
    if layout == "rows":
        return shape[0], tuple(shape[1:])
    if layout == "cols":
        return shape[1], (shape[0], *shape[2:])
    if layout == "last":
        return math.prod(shape[:-1]), (shape[-1],)
    raise ValueError(f"unknown layout {layout!r}")


def make_rule(
    rule: str,
    role: str,
    shape: tuple[int, ...],
    layout: str,
    reason: str,
    rows_per_block: int = 1,
    parts: list[tuple[str, str, int, int]] | None = None,
    evidence: dict[str, Any] | None = None,
) -> BlockRule:
    """Build a rule; ``parts`` = [(part, rule, rows, rows_per_block)] for fused tensors."""
    n_rows, rshape = row_shape(shape, layout)
    segs: list[Segment] = []
    if parts is None:
        if rule == "whole":
            rows_per_block = n_rows
        parts = [("all", rule, n_rows, rows_per_block)]
    start = 0
    for part, prule, rows, rpb in parts:
        if rpb <= 0 or rows % rpb:
            raise ValueError(f"{rows} rows do not split into blocks of {rpb}")
        segs.append(Segment(part, prule, start, start + rows, rpb, rshape))
        start += rows
    if start != n_rows:
        raise ValueError(f"segments cover {start} of {n_rows} rows")
    return BlockRule(rule, role, tuple(shape), layout, tuple(segs), reason, evidence)
