"""Does a block partition follow the Hessian? Mass share of diagonal sub-blocks vs random partitions.

For one parameter tensor with diagonal Hessian block H (n x n) and a partition of its coordinates
into blocks, the *share* is sum_b ||H[b, b]||_F^2 / ||H||_F^2. A random partition with the same block
sizes gives the baseline; the *normalised excess* (share - random) / (1 - random) is 1 for a perfect
block-diagonal fit and ~0 for a partition no better than chance. Columns of H are computed exactly
with Hessian-vector products restricted to the tensor (all columns when the tensor has at most
``max_columns`` coordinates, else whole blocks sampled at random, which the result flags).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from hessian_spectra.analyses.partitions.partition import Partition
from hessian_spectra.analyses.partitions.rules import BlockRule, make_rule
from hessian_spectra.analyses.partitions.views import rule_views
from torch import nn

#: Default pass rule: the partition must remove at least half of the mass a random one leaves off-block.
MIN_EXCESS = 0.5
#: Default discovery threshold: the finest candidate split keeping at least this share of the mass.
DISCOVER_THRESHOLD = 0.9


def block_labels(rule: BlockRule) -> torch.Tensor:
    """Block id of every coordinate of the tensor, in its flat (row-major) order."""
    idx = torch.arange(rule.numel).view(rule.shape) if rule.shape else torch.arange(1).view(())
    labels = torch.empty(rule.numel, dtype=torch.long)
    offset = 0
    for view in rule_views(rule, idx):
        nb = view.shape[0]
        labels[view.reshape(nb, -1)] = torch.arange(offset, offset + nb)[:, None]
        offset += nb
    return labels


def mass_share(H_cols: torch.Tensor, cols: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of the squared mass of columns ``cols`` of H (given as H[:, cols]) inside their own block."""
    sq = H_cols.pow(2)
    total = float(sq.sum())
    if total == 0.0:
        return float("nan")
    same = labels[:, None] == labels[cols][None, :]
    return float(sq[same].sum()) / total


def random_shares(
    H_cols: torch.Tensor, cols: torch.Tensor, labels: torch.Tensor, n: int, seed: int
) -> torch.Tensor:
    """Shares of ``n`` random partitions with the same block sizes (coordinates permuted)."""
    g = torch.Generator().manual_seed(seed)
    out = [mass_share(H_cols, cols, labels[torch.randperm(labels.numel(), generator=g)]) for _ in range(n)]
    return torch.tensor(out, dtype=torch.float64)


@dataclass(frozen=True)
class TensorCheck:
    """Mass share of one tensor's proposed blocks vs random partitions of the same sizes."""

    name: str
    rule: str
    role: str
    num_blocks: int
    share: float
    random_mean: float
    random_std: float
    excess: float
    passed: bool
    exact: bool
    columns: int
    in_block_mass: float
    total_mass: float
    random_in_block_mass: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RuleCheck:
    """One rule (e.g. ``per_head:q``) pooled over its tensors: mass-weighted shares and pass/fail."""

    key: str
    tensors: int
    share: float
    random_mean: float
    excess: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Discovery:
    """Candidate splits of an unresolved tensor and the finest one above the threshold."""

    name: str
    candidates: list[dict[str, Any]]
    chosen: str | None
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VerifyReport:
    """Per-tensor and per-rule checks, discoveries, and the partition updated with the evidence."""

    tensors: list[TensorCheck]
    rules: list[RuleCheck]
    discoveries: list[Discovery]
    partition: Partition
    settings: dict[str, Any] = field(default_factory=dict)
    num_hvps: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "num_hvps": self.num_hvps,
            "rules": [r.to_dict() for r in self.rules],
            "tensors": [t.to_dict() for t in self.tensors],
            "discoveries": [d.to_dict() for d in self.discoveries],
        }


class _Columns:
    """Exact columns of one tensor's diagonal Hessian block via the shared HessianOperator."""

    def __init__(self, model: nn.Module, batches: Any, loss: Callable | None, dtype: torch.dtype | None):
        self.model, self.batches, self.loss, self.dtype = model, batches, loss, dtype
        self.num_hvps = 0

    def __call__(self, name: str, cols: torch.Tensor, n: int) -> torch.Tensor:
        from hessian_spectra.curvature.hessian import HessianOperator

        op = HessianOperator(self.model, self.batches, self.loss, params=[name], dtype=self.dtype)
        E = torch.zeros(n, cols.numel(), dtype=op.dtype, device=op.device)
        E[cols.to(op.device), torch.arange(cols.numel(), device=op.device)] = 1.0
        out = op.matmat(E)
        self.num_hvps += cols.numel()
        return out.detach().to("cpu", torch.float64)


def _pick_columns(labels: torch.Tensor, max_columns: int, seed: int) -> tuple[torch.Tensor, bool]:
    n = labels.numel()
    if n <= max_columns:
        return torch.arange(n), True
    g = torch.Generator().manual_seed(seed)
    nb = int(labels.max()) + 1
    chosen: list[torch.Tensor] = []
    used = 0
    for b in torch.randperm(nb, generator=g).tolist():
        members = (labels == b).nonzero().flatten()
        if used and used + members.numel() > max_columns:
            continue
        chosen.append(members)
        used += members.numel()
        if used >= max_columns:
            break
    return torch.cat(chosen).sort().values, False


def _check(H_cols, cols, labels, n_random, seed) -> tuple[float, float, float, float, float, float]:
    share = mass_share(H_cols, cols, labels)
    rnd = random_shares(H_cols, cols, labels, n_random, seed)
    total = float(H_cols.pow(2).sum())
    return (
        share,
        float(rnd.mean()),
        float(rnd.std()) if n_random > 1 else 0.0,
        share * total,
        total,
        float(rnd.mean()) * total,
    )


def _excess(share: float, rnd: float) -> float:
    return (share - rnd) / (1.0 - rnd) if rnd < 1.0 else float("nan")


def candidate_rules(name: str, shape: tuple[int, ...], head_dim: int | None) -> list[tuple[str, BlockRule]]:
    """Candidate splits for a tensor of unknown role: whole, rows, columns, heads (and experts for 3-D)."""
    out: list[tuple[str, BlockRule]] = [
        ("whole", make_rule("whole", "other", shape, "flat", "discovered: whole"))
    ]
    if len(shape) < 2:
        return out
    out.append(
        ("rows", make_rule("per_row", "other", shape, "rows", "discovered: one value per row (dim 0)"))
    )
    out.append(
        (
            "columns",
            make_rule("per_column", "other", shape, "cols", "discovered: one value per column (dim 1)"),
        )
    )
    if len(shape) >= 3:
        out.append(
            (
                "last_rows",
                make_rule("per_expert_row", "other", shape, "last", "discovered: per slice, then rows"),
            )
        )
    if head_dim:
        for label, layout, n in (("row_heads", "rows", shape[0]), ("column_heads", "cols", shape[1])):
            if n % head_dim == 0 and n // head_dim > 1:
                reason = f"discovered: one value per head of {head_dim} {label.split('_')[0][:-1]}s"
                out.append(
                    (label, make_rule("per_head", "other", shape, layout, reason, rows_per_block=head_dim))
                )
    return out


def verify_partition(
    model: nn.Module,
    batches: Any,
    loss: Callable[[nn.Module, Any], torch.Tensor] | None,
    partition: Partition,
    *,
    params: Sequence[str] | None = None,
    n_random: int = 20,
    min_excess: float = MIN_EXCESS,
    threshold: float = DISCOVER_THRESHOLD,
    max_columns: int = 2048,
    dtype: torch.dtype | None = torch.float64,
    discover: bool = True,
    seed: int = 0,
) -> VerifyReport:
    """Measure each rule's captured Hessian mass vs random partitions; discover rules for unresolved tensors.

    ``loss(model, batch)`` gives a batch's mean loss (None: the model's own ``.loss``). Rules with one
    block or one coordinate per block are trivially exact and not measured. A tensor passes when its
    normalised excess is at least ``min_excess``; a rule passes when its pooled excess does. Unresolved
    tensors get the finest candidate split whose share is at least ``threshold``.
    """
    model64 = (
        copy.deepcopy(model) if dtype is not None else model
    )  # the operator never touches the user's model
    columns = _Columns(model64, batches, loss, dtype)
    names = list(params) if params is not None else list(partition.entries)
    checks: list[TensorCheck] = []
    evidence: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        rule = partition.entries.get(name)
        if rule is None or rule.num_blocks <= 1 or rule.num_blocks == rule.numel:
            continue
        labels = block_labels(rule)
        cols, exact = _pick_columns(labels, max_columns, seed + i)
        H_cols = columns(name, cols, rule.numel)
        share, rmean, rstd, inb, total, rinb = _check(H_cols, cols, labels, n_random, seed + i)
        exc = _excess(share, rmean)
        tc = TensorCheck(
            name, rule.rule, rule.role, rule.num_blocks, share, rmean, rstd, exc, bool(exc >= min_excess),
            exact, int(cols.numel()), inb, total, rinb,
        )  # fmt: skip
        checks.append(tc)
        if len(rule.segments) > 1:  # fused tensors: one check per part (Q, K, V) on that part's columns
            first = 0
            for sg in rule.segments:
                in_seg = (labels[cols] >= first) & (labels[cols] < first + sg.num_blocks)
                first += sg.num_blocks
                if not bool(in_seg.any()) or sg.num_blocks <= 1:
                    continue
                rows = ((labels >= first - sg.num_blocks) & (labels < first)).nonzero().flatten()
                pos = torch.full((rule.numel,), -1, dtype=torch.long)
                pos[rows] = torch.arange(rows.numel())
                # the part's own diagonal block H[part, part], as if it were a separate tensor
                sub = _check(H_cols[rows][:, in_seg], pos[cols[in_seg]], labels[rows], n_random, seed + i)
                exc_p = _excess(sub[0], sub[1])
                checks.append(
                    TensorCheck(
                        f"{name}[{sg.part}]",
                        sg.rule,
                        sg.part,
                        sg.num_blocks,
                        sub[0],
                        sub[1],
                        sub[2],
                        exc_p,
                        bool(exc_p >= min_excess),
                        exact,
                        int(in_seg.sum()),
                        sub[3],
                        sub[4],
                        sub[5],
                    )  # fmt: skip
                )
        evidence[name] = {
            "share": share,
            "random_share": rmean,
            "excess": exc,
            "passed": tc.passed,
            "exact": exact,
            "columns": int(cols.numel()),
        }
    pooled: dict[str, list[TensorCheck]] = {}
    for tc in checks:
        pooled.setdefault(f"{tc.rule}:{tc.role}", []).append(tc)
    rules = []
    for key, tcs in sorted(pooled.items()):
        total = sum(t.total_mass for t in tcs)
        share = sum(t.in_block_mass for t in tcs) / total if total else float("nan")
        rnd = sum(t.random_in_block_mass for t in tcs) / total if total else float("nan")
        exc = _excess(share, rnd)
        rules.append(RuleCheck(key, len(tcs), share, rnd, exc, bool(exc >= min_excess)))

    part = partition.with_evidence(evidence)
    discoveries: list[Discovery] = []
    if discover:
        for j, name in enumerate(list(partition.unresolved)):
            shape = partition.unresolved_shape(name)
            cands = []
            best: tuple[int, str, BlockRule, dict[str, Any]] | None = None
            n = math.prod(shape)
            cols = torch.arange(n) if n <= max_columns else None
            if cols is None:
                discoveries.append(Discovery(name, [], None, threshold))
                continue
            H = columns(name, cols, n)
            for label, cand in candidate_rules(name, shape, partition.arch.head_dim):
                labels = block_labels(cand)
                share = mass_share(H, cols, labels)
                rmean = (
                    float(random_shares(H, cols, labels, n_random, seed + 1000 + j).mean())
                    if cand.num_blocks > 1
                    else 1.0
                )
                cands.append(
                    {"split": label, "num_blocks": cand.num_blocks, "share": share, "random_share": rmean}
                )
                if share >= threshold and (best is None or cand.num_blocks > best[0]):
                    ev = {
                        "share": share,
                        "random_share": rmean,
                        "threshold": threshold,
                        "exact": True,
                        "split": label,
                    }
                    best = (cand.num_blocks, label, cand, ev)
            chosen = None
            if best is not None:
                _, chosen, cand, ev = best
                reason = f"{cand.reason}: finest split keeping >= {threshold:.2f} of the Hessian block's mass ({ev['share']:.3f})"
                part = part.resolve(name, replace(cand, reason=reason, evidence=ev))
            discoveries.append(Discovery(name, cands, chosen, threshold))
    settings = {
        "n_random": n_random,
        "min_excess": min_excess,
        "discover_threshold": threshold,
        "max_columns": max_columns,
        "dtype": str(dtype),
        "seed": seed,
        "pass_rule": "(share - random) / (1 - random) >= min_excess",
    }
    return VerifyReport(checks, rules, discoveries, part, settings, columns.num_hvps)
