"""The adam-mini 1.1.1 package's view of a partition: a simulation of how its ``step`` treats each parameter,
the constructor arguments and name sets that reproduce a partition (with what it cannot express), and the
configured optimizer."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from hessian_spectra.analyses.partitions.partition import FALLBACK_RULE, Partition
from hessian_spectra.analyses.partitions.rules import BlockRule
from hessian_spectra.errors import InputError

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
