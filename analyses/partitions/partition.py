"""Adam-mini style partition of a model's parameters into blocks that share one second moment.

``Partition`` holds one block rule per trainable parameter (built by ``partition_model`` in
:mod:`hessian_spectra.analyses.partitions.build` from the architecture rules of
:mod:`hessian_spectra.analyses.partitions.rules`), its summary (learning rates, optimizer-state memory)
and its JSON form: exported with ``write_partition``, reloaded with ``read_partition`` /
``Partition.from_json``. Per-block tensor views (``block_views``) live in
:mod:`hessian_spectra.analyses.partitions.views`, the adam-mini 1.1.1 configuration
(``adam_mini_kwargs``, ``make_adam_mini``) in :mod:`hessian_spectra.analyses.partitions.adam_mini`;
``--verify`` in :mod:`hessian_spectra.analyses.structure`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hessian_spectra.analyses.partitions.rules import ArchInfo, BlockRule
from hessian_spectra.errors import InputError
from hessian_spectra.io import atomic_write_json

SCHEMA_VERSION = "hessian-spectra/partition/1"

#: What an unresolved or inexpressible parameter gets: plain Adam is finer than any block rule.
FALLBACK_RULE = "per_coordinate"


@dataclass(frozen=True)
class Partition:
    """Per-parameter block rules, the parameters no rule resolved, model facts and a summary."""

    entries: dict[str, BlockRule]
    unresolved: list[str]
    model_info: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def arch(self) -> ArchInfo:
        a = self.model_info.get("arch") or {}
        return ArchInfo(
            model_type=a.get("model_type"),
            hidden_size=a.get("hidden_size"),
            num_heads=a.get("num_attention_heads"),
            num_kv_heads=a.get("num_key_value_heads"),
            head_dim=a.get("head_dim"),
            conv1d=bool(a.get("conv1d_layout")),
        )

    @property
    def num_learning_rates(self) -> int:
        """Second-moment values used: block counts, unresolved tensors counted per coordinate."""
        return int(self.summary["num_learning_rates"])

    def unresolved_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.model_info["unresolved"][name]["shape"])

    def resolve(self, name: str, rule: BlockRule) -> Partition:
        """A new partition with ``name`` moved from unresolved to ``rule`` (used by discovery)."""
        entries = dict(self.entries)
        entries[name] = rule
        unresolved = [n for n in self.unresolved if n != name]
        info = dict(self.model_info)
        info["unresolved"] = {k: v for k, v in info.get("unresolved", {}).items() if k != name}
        return _build(entries, unresolved, info)

    def with_evidence(self, evidence: Mapping[str, dict[str, Any]]) -> Partition:
        """A new partition whose entries carry the measured Hessian evidence given per name."""
        entries = {
            n: replace(r, evidence=dict(evidence[n])) if n in evidence else r for n, r in self.entries.items()
        }
        return _build(entries, list(self.unresolved), dict(self.model_info))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "model": self.model_info,
            "summary": self.summary,
            "parameters": {name: rule.to_dict() for name, rule in self.entries.items()},
            "unresolved": list(self.unresolved),
            "adam_mini": self.adam_mini_kwargs(),
        }

    def to_json(self) -> str:
        from hessian_spectra.io import json_safe

        return json.dumps(json_safe(self.to_dict()), indent=2, allow_nan=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Partition:
        schema = d.get("schema")
        if schema != SCHEMA_VERSION:
            raise InputError(None, f"partition JSON has schema {schema!r}, expected {SCHEMA_VERSION!r}")
        entries = {name: BlockRule.from_dict(r) for name, r in d["parameters"].items()}
        return _build(entries, list(d.get("unresolved", [])), dict(d["model"]))

    @classmethod
    def from_json(cls, text: str) -> Partition:
        return cls.from_dict(json.loads(text))

    def adam_mini_kwargs(self) -> dict[str, Any]:
        """Constructor arguments and name sets for adam-mini 1.1.1, plus what it cannot express."""
        from hessian_spectra.analyses.partitions.adam_mini import adam_mini_config

        return adam_mini_config(self)


def _build(entries: dict[str, BlockRule], unresolved: list[str], model_info: dict[str, Any]) -> Partition:
    return Partition(entries, unresolved, model_info, summarize(entries, model_info.get("unresolved", {})))


def summarize(
    entries: Mapping[str, BlockRule], unresolved_info: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Counts of learning rates, their share of parameters, and optimizer-state memory vs AdamW."""
    per_rule: dict[str, dict[str, int]] = {}
    n_params = 0
    n_lr = 0
    for rule in entries.values():
        d = per_rule.setdefault(rule.rule, {"tensors": 0, "params": 0, "blocks": 0})
        d["tensors"] += 1
        d["params"] += rule.numel
        d["blocks"] += rule.num_blocks
        n_params += rule.numel
        n_lr += rule.num_blocks
    unresolved_params = sum(math.prod(u["shape"]) for u in unresolved_info.values())
    n_params += unresolved_params
    n_lr += unresolved_params  # counted at the per-coordinate fallback
    gib = 1024**3

    def mem(values: int) -> dict[str, float]:
        return {
            "fp32_bytes": 4 * values,
            "bf16_bytes": 2 * values,
            "fp32_gib": 4 * values / gib,
            "bf16_gib": 2 * values / gib,
        }

    return {
        "num_params": n_params,
        "num_tensors": len(entries) + len(unresolved_info),
        "num_learning_rates": n_lr,
        "learning_rate_share": n_lr / n_params if n_params else 0.0,
        "num_unresolved": len(unresolved_info),
        "unresolved_params": unresolved_params,
        "unresolved_counted_as": FALLBACK_RULE,
        "per_rule": per_rule,
        "optimizer_state": {
            "adamw": mem(2 * n_params),
            "partition": mem(n_params + n_lr),
            "saving_fraction": 1.0 - (n_params + n_lr) / (2 * n_params) if n_params else 0.0,
            "note": "first moment (one per parameter) + second moments (one per block); AdamW keeps two per parameter",
        },
    }


def write_partition(partition: Partition, path: str | Path) -> Path:
    """Write the partition JSON atomically (what ``spectra partition MODEL --out`` calls)."""
    atomic_write_json(path, partition.to_dict())
    return Path(path)


def read_partition(path: str | Path) -> Partition:
    """Load a partition JSON written by :func:`write_partition`."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise InputError(path, f"cannot read ({err.strerror})") from err
    try:
        return Partition.from_json(text)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise InputError(path, f"not a partition JSON ({err})") from err
