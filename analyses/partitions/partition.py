"""Adam-mini style partition of a model's parameters into blocks that share one second moment.

``partition_model`` applies the architecture rules of :mod:`hessian_spectra.analyses.partitions.rules` to every
trainable parameter; ``Partition`` exports them as JSON (``write_partition``), reloads them
(``Partition.from_json``), turns them into per-block tensor views any optimizer can use
(``block_views``) and into a configuration for the adam-mini 1.1.1 package (``adam_mini_kwargs``,
``make_adam_mini``), listing what that package cannot express. ``--verify`` lives in
:mod:`hessian_spectra.analyses.structure`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from hessian_spectra.analyses.partitions.rules import (
    ArchInfo,
    BlockRule,
    ParamInfo,
    arch_info,
    classify,
    make_rule,
)
from hessian_spectra.errors import InputError
from hessian_spectra.io import atomic_write_json

SCHEMA_VERSION = "hessian-spectra/partition/1"

#: adam-mini 1.1.1's default name sets (lower-case substring match) and its branch order in ``step``.
ADAM_MINI_DEFAULT_NAME_SETS: dict[str, tuple[str, ...]] = {
    "adam_block_names": ("bias",),
    "wqk_names": ("k_proj", "q_proj", "wq", "wk", "query", "key"),
    "embd_names": ("embed", "embd", "wte"),
    "output_names": ("lm_head", "output", "final_layer"),
    "wv_names": ("v_proj", "wv", "value"),
    "attn_proj_names": ("o_proj", "wo", "attn.proj"),
    "mlp_names": ("feed_forward", "linear", "mlp"),
}
_ROW_SETS = ("embd_names", "output_names", "wv_names", "mlp_names", "attn_proj_names")
_ROLE_TO_ROW_SET = {
    "embedding": "embd_names",
    "position_embedding": "embd_names",
    "lm_head": "output_names",
    "classifier": "output_names",
    "v": "wv_names",
    "attn_out": "attn_proj_names",
}
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
        return adam_mini_config(self)


# --------------------------------------------------------------------------------------------- build


def _param_infos(model: Any, config: Any | None) -> tuple[list[ParamInfo], dict[str, str], list[str], Any]:
    """ParamInfos of trainable parameters, tied aliases {alias: canonical}, frozen names, config."""
    infos: list[ParamInfo] = []
    tied: dict[str, str] = {}
    frozen: list[str] = []
    if isinstance(model, torch.nn.Module):
        if config is None:
            config = getattr(model, "config", None)
        modules = dict(model.named_modules())
        seen: dict[int, str] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            if id(p) in seen:
                tied[name] = seen[id(p)]
                continue
            seen[id(p)] = name
            if not p.requires_grad:
                frozen.append(name)
                continue
            owner = modules.get(name.rsplit(".", 1)[0] if "." in name else "", model)
            infos.append(ParamInfo(name, tuple(p.shape), type(owner).__name__))
        return infos, tied, frozen, config
    if isinstance(model, Mapping):
        ptrs: dict[tuple[int, tuple[int, ...]], str] = {}
        for name, value in model.items():
            shape = tuple(value.shape) if hasattr(value, "shape") else tuple(value)
            if isinstance(value, torch.Tensor) and value.numel() > 0:
                key = (value.data_ptr(), shape)
                if key in ptrs:
                    tied[name] = ptrs[key]
                    continue
                ptrs[key] = name
            infos.append(ParamInfo(name, tuple(int(s) for s in shape), None))
        return infos, tied, frozen, config
    raise InputError(
        None, f"cannot partition a {type(model).__name__}: give an nn.Module or a name->tensor mapping"
    )


def _config_dict(config: Any | None) -> dict[str, Any] | None:
    if config is None:
        return None
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):
        try:
            return config.to_dict()
        except Exception:  # noqa: BLE001 - a broken config must not stop the partition
            return None
    return None


def partition_model(model: Any, config: Any | None = None) -> Partition:
    """Partition every trainable parameter of ``model`` (nn.Module or name->tensor/shape mapping).

    ``config`` (HF config or dict; defaults to ``model.config``) supplies heads, kv heads and
    head_dim. Parameters no rule covers are listed in ``unresolved`` with the reason, never lumped.
    """
    infos, tied, frozen, config = _param_infos(model, config)
    arch = arch_info(config)
    entries: dict[str, BlockRule] = {}
    unresolved: list[str] = []
    unresolved_info: dict[str, dict[str, Any]] = {}
    for info in infos:
        role, rule, reason = classify(info, arch)
        if rule is None:
            unresolved.append(info.name)
            unresolved_info[info.name] = {"shape": list(info.shape), "role": role, "reason": reason}
        else:
            entries[info.name] = rule
    model_info = {
        "class": type(model).__name__ if isinstance(model, torch.nn.Module) else None,
        "arch": arch.to_dict(),
        "tied": tied,
        "frozen": frozen,
        "unresolved": unresolved_info,
    }
    return _build(entries, unresolved, model_info)


def partition_checkpoint(path: str | Path) -> Partition:
    """Partition a Hugging Face folder (config.json + *.safetensors) from tensor shapes alone."""
    from safetensors import safe_open

    folder = Path(path)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise InputError(folder, "no config.json: the partition needs heads and head_dim from the config")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(cfg_path, f"not valid JSON ({err})") from err
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise InputError(folder, "no *.safetensors files")
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                shapes[key] = tuple(fh.get_slice(key).get_shape())
    part = partition_model(shapes, config)
    info = dict(part.model_info)
    info["source"] = str(folder)
    return _build(dict(part.entries), list(part.unresolved), info)


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


# --------------------------------------------------------------------------------------------- views


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


# ------------------------------------------------------------------------------------------ adam-mini


def simulate_adam_mini(
    shapes: Mapping[str, tuple[int, ...]], name_sets: Mapping[str, Iterable[str]], dim: int, n_heads: int
) -> dict[str, dict[str, Any]]:
    """What adam-mini 1.1.1's ``step`` does with each parameter: branch, learning rates, or the crash.

    Mirrors its first-match order: adam_block_names (per coordinate), wqk_names (chunks of
    dim*dim//n_heads elements), the row sets (one value per row of a 2-D tensor), else one per tensor.
    """
    sets = {k: [s.lower() for s in v] for k, v in name_sets.items()}
    head_numel = dim * dim // n_heads
    out: dict[str, dict[str, Any]] = {}
    for name, shape in shapes.items():
        lname = name.lower()
        numel = math.prod(shape)
        if any(s in lname for s in sets.get("adam_block_names", ())):
            out[name] = {"branch": "per_coordinate", "learning_rates": numel, "problem": None}
        elif any(s in lname for s in sets.get("wqk_names", ())):
            if numel % head_numel:
                out[name] = {
                    "branch": "per_head",
                    "learning_rates": None,
                    "problem": f"crash: {numel} elements do not split into heads of dim*dim//n_heads={head_numel}",
                }
            else:
                out[name] = {"branch": "per_head", "learning_rates": numel // head_numel, "problem": None}
        elif any(any(s in lname for s in sets.get(k, ())) for k in _ROW_SETS):
            ok = len(shape) == 2 or (len(shape) > 2 and math.prod(shape[2:]) == 1)
            out[name] = {
                "branch": "per_row",
                "learning_rates": shape[0] if ok else None,
                "problem": None
                if ok
                else f"crash: one value per row needs a 2-D tensor, got shape {list(shape)}",
            }
        else:
            out[name] = {"branch": "whole", "learning_rates": 1, "problem": None}
    return out


def _desired_branch(rule: BlockRule) -> tuple[str, int | None]:
    """The adam-mini branch that reproduces ``rule`` exactly ("chunk" needs head_numel = value)."""
    if rule.rule == "per_coordinate":
        return "per_coordinate", None
    if rule.rule == "whole" or rule.num_blocks == 1:
        return "whole", None
    if len(rule.segments) != 1 or rule.layout == "cols":
        return "none", None
    seg = rule.segments[0]
    if rule.layout == "rows" and len(rule.shape) == 2 and seg.rows_per_block == 1:
        return "per_row", None
    if rule.layout in ("rows", "last", "flat"):  # contiguous equal chunks of the flattened tensor
        return "chunk", seg.block_numel
    return "none", None


def _inexpressible_reason(rule: BlockRule) -> str:
    if rule.layout == "cols":
        return "Conv1D (in, out) layout: adam-mini's rows are input neurons and its heads are not contiguous"
    if len(rule.segments) > 1:
        return "fused tensor with different rules per part (Q/K per head, V per row): adam-mini gives one rule per tensor"
    return "no adam-mini branch reproduces this block shape"


def adam_mini_config(partition: Partition) -> dict[str, Any]:
    """adam-mini 1.1.1 constructor arguments + name sets reproducing ``partition``, and what it cannot.

    Name sets hold exact lower-case parameter names (adam-mini matches substrings, so each choice is
    checked with :func:`simulate_adam_mini`). All per-head/per-chunk tensors share one chunk size
    ``dim*dim//n_heads``; ``dim``/``n_heads`` are picked to make it the head block (adam-mini uses them
    for nothing else). Tensors it cannot express fall back to plain Adam (per coordinate).
    """
    arch = partition.arch
    shapes: dict[str, tuple[int, ...]] = {n: r.shape for n, r in partition.entries.items()}
    shapes.update({n: partition.unresolved_shape(n) for n in partition.unresolved})
    desired: dict[str, tuple[str, int | None]] = {n: _desired_branch(r) for n, r in partition.entries.items()}
    unsupported: list[dict[str, Any]] = []
    notes: list[str] = []

    # one chunk size for all per-head tensors: the one covering most parameters (Q/K first)
    sizes: dict[int, int] = {}
    for name, (branch, n) in desired.items():
        if branch == "chunk" and n is not None:
            bonus = 10**15 if partition.entries[name].role in ("q", "k") else 0
            sizes[n] = sizes.get(n, 0) + partition.entries[name].numel + bonus
    head_numel = max(sizes, key=sizes.__getitem__) if sizes else None
    dim, n_heads, n_kv = arch.hidden_size or 2048, arch.num_heads or 32, arch.num_kv_heads
    if head_numel is not None and not (dim * dim % n_heads == 0 and dim * dim // n_heads == head_numel):
        old = (dim, n_heads)
        if dim * dim % head_numel == 0:
            n_heads = dim * dim // head_numel
        else:
            dim, n_heads = head_numel, head_numel
        n_kv = None
        notes.append(
            f"dim={dim}, n_heads={n_heads} chosen so that dim*dim//n_heads equals the head block "
            f"({head_numel} elements); the model's own dim={old[0]}, n_heads={old[1]} would give chunks of "
            f"{old[0] * old[0] // old[1]} elements and cut heads wrongly (adam-mini uses dim/n_heads for nothing else)"
        )
    if n_kv is not None and n_heads % n_kv:
        n_kv = None

    sets: dict[str, list[str]] = {k: [] for k in ADAM_MINI_DEFAULT_NAME_SETS}
    expected: dict[str, str] = {}
    for name, (branch, n) in desired.items():
        rule = partition.entries[name]
        if branch == "chunk" and n != head_numel:
            branch = "none"
            reason = (
                f"blocks of {n} elements, but adam-mini has one chunk size (dim*dim//n_heads={head_numel})"
            )
        elif branch == "none":
            reason = _inexpressible_reason(rule)
        if branch == "none":
            unsupported.append(
                {"name": name, "rule": rule.rule, "reason": reason, "adam_mini_treatment": FALLBACK_RULE}
            )
            branch = "per_coordinate"
        expected[name] = {"chunk": "per_head"}.get(branch, branch)
        lname = name.lower()
        if branch == "per_coordinate":
            sets["adam_block_names"].append(lname)
        elif branch == "chunk":
            sets["wqk_names"].append(lname)
        elif branch == "per_row":
            sets[_ROLE_TO_ROW_SET.get(rule.role, "mlp_names")].append(lname)
    for name in partition.unresolved:
        unsupported.append(
            {
                "name": name,
                "rule": "unresolved",
                "reason": partition.model_info["unresolved"][name]["reason"],
                "adam_mini_treatment": FALLBACK_RULE,
            }
        )
        sets["adam_block_names"].append(name.lower())
        expected[name] = "per_coordinate"

    sim = simulate_adam_mini(shapes, sets, dim, n_heads)
    collisions = [n for n in shapes if sim[n]["branch"] != expected[n] or sim[n]["problem"]]
    for name in collisions:  # a name that is a substring of another parameter's name
        unsupported.append(
            {
                "name": name,
                "rule": partition.entries[name].rule if name in partition.entries else "unresolved",
                "reason": f"adam-mini's substring matching sends it to '{sim[name]['branch']}'",
                "adam_mini_treatment": sim[name]["branch"],
            }
        )
    n_lr = sum(s["learning_rates"] or 0 for s in sim.values())

    default = simulate_adam_mini(
        shapes, ADAM_MINI_DEFAULT_NAME_SETS, arch.hidden_size or 2048, arch.num_heads or 32
    )
    default_problems = []
    for name, s in default.items():
        want = partition.entries[name].num_blocks if name in partition.entries else None
        if s["problem"] or s["learning_rates"] != want:
            default_problems.append(
                {
                    "name": name,
                    "default_branch": s["branch"],
                    "default_learning_rates": s["learning_rates"],
                    "partition_learning_rates": want,
                    "problem": s["problem"],
                }
            )
    return {
        "package": "adam-mini==1.1.1",
        "constructor": {"dim": dim, "n_heads": n_heads, "n_kv_heads": n_kv, "verbose": False},
        "name_sets": {k: sorted(v) for k, v in sets.items()},
        "num_learning_rates": n_lr,
        "partition_learning_rates": partition.num_learning_rates,
        "matches_partition": not unsupported,
        "unsupported": unsupported,
        "default_config_differences": default_problems,
        "notes": notes
        + [
            "name sets replace adam-mini's defaults (exact lower-case names, substring-matched by adam-mini)",
            "adam-mini sets weight decay 0 for names containing 'norm', 'ln' or 'bias' regardless of the partition",
        ],
    }


def make_adam_mini(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    partition: Partition,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> Any:
    """An ``adam_mini.Adam_mini`` optimizer configured by ``partition`` (name sets replaced)."""
    from adam_mini import Adam_mini

    cfg = partition.adam_mini_kwargs()
    named = list(named_parameters)
    known = set(partition.entries) | set(partition.unresolved)
    unknown = [n for n, p in named if p.requires_grad and n not in known]
    if unknown:
        raise InputError(
            unknown[0], f"parameter not in the partition ({len(unknown)} such); re-run the partition"
        )
    opt = Adam_mini(named, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **cfg["constructor"])
    for key, names in cfg["name_sets"].items():
        setattr(opt, key, set(names))
    return opt


def adam_mini_state_learning_rates(optimizer: Any) -> dict[str, int]:
    """Second-moment values adam-mini actually holds per parameter (after at least one step)."""
    out: dict[str, int] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "v" in state:
                out[group["name"]] = state["v"].numel()
            elif "vmean" in state:
                out[group["name"]] = state["vmean"].numel()
    return out
