"""Coverage of interval estimates against exact answers: the full Hessian and its per-tensor diagonal blocks
of a zoo case as dense operators, seeded runs of SLQ / trace estimators, and how often each interval covers
the exact value. Shared by tests/krylov/test_coverage.py and bench/bench_uncertainty.py."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from hessian_spectra.krylov.intervals import Interval
from hessian_spectra.krylov.linop import DenseBlockOperator, DenseOperator
from hessian_spectra.krylov.slq import SLQResult, slq, slq_lockstep
from scipy.special import ndtr

from support.models import get_case
from support.oracles import case_hessian


@dataclass
class Target:
    """One symmetric matrix with its exact eigenvalues (the truth every interval is checked against)."""

    name: str
    matrix: torch.Tensor
    eigenvalues: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.eigenvalues = torch.linalg.eigvalsh(self.matrix).numpy()

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def trace(self) -> float:
        return float(np.sum(self.eigenvalues))

    def smoothed_mass_below(self, threshold: float, sigma: float) -> float:
        """(1/n) sum_j Phi((threshold - lambda_j) / sigma): the mass of the smoothed density below threshold."""
        return float(np.mean(ndtr((threshold - self.eigenvalues) / sigma)))

    def negative_share(self) -> float:
        ev = self.eigenvalues
        return float(-ev[ev < 0].sum() / np.abs(ev).sum())

    @property
    def tolerance(self) -> float:
        """Rounding of the exact values themselves (eigvalsh of the oracle matrix)."""
        return 1e-12 * float(np.abs(self.eigenvalues).sum() + 1e-300)


def case_targets(case: str, min_dim: int = 1) -> tuple[Target, list[Target]]:
    """The exact float64 Hessian of a zoo case (tests/support/models.py) and its per-tensor diagonal blocks
    with at least ``min_dim`` coordinates."""
    h = case_hessian(case)
    model = get_case(case).model
    blocks, a = [], 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        n = p.numel()
        if n >= min_dim:
            blocks.append(Target(name, h[a : a + n, a : a + n].clone()))
        a += n
    return Target("full", h), blocks


@dataclass
class Tally:
    """Per target and statistic: how many runs covered the exact value, the errors and the methods used."""

    covered: dict[tuple[str, str], list[bool]] = field(default_factory=dict)
    errors: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    widths: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    methods: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def add(self, target: Target, stat: str, iv: Interval, exact: float) -> None:
        key = (target.name, stat)
        self.covered.setdefault(key, []).append(iv.covers(exact, target.tolerance))
        self.errors.setdefault(key, []).append(iv.estimate - exact)
        self.widths.setdefault(key, []).append(iv.ci_high - iv.ci_low)
        self.methods.setdefault(key, set()).add(iv.method)

    def coverage(self, stat: str, names: Iterable[str] | None = None) -> float:
        """Pooled coverage of ``stat`` over ``names`` (default: every target)."""
        keep = None if names is None else set(names)
        hits = [
            c for (n, s), cs in self.covered.items() if s == stat and (keep is None or n in keep) for c in cs
        ]
        return float(np.mean(hits)) if hits else float("nan")

    def runs(self, stat: str, names: Iterable[str] | None = None) -> int:
        keep = None if names is None else set(names)
        return sum(
            len(cs) for (n, s), cs in self.covered.items() if s == stat and (keep is None or n in keep)
        )

    def rmse(self, name: str, stat: str) -> float:
        return float(np.sqrt(np.mean(np.square(self.errors[(name, stat)]))))

    def exact_only(self, name: str, stat: str) -> bool:
        return self.methods.get((name, stat)) == {"exact"}


def record_slq(
    tally: Tally, target: Target, res: SLQResult, level: float, *, negative_share: bool = False
) -> None:
    """Add one SLQ run's trace (auto and plain), smoothed mass below zero and optionally the bootstrapped
    negative-curvature share to ``tally``."""
    tally.add(target, "trace", res.trace_interval(level), target.trace)
    tally.add(target, "trace-plain", res.trace_interval(level, method="plain"), target.trace)
    sigma = res.density_sigma()
    tally.add(target, "mass<0", res.mass_below(0.0, level=level), target.smoothed_mass_below(0.0, sigma))
    if negative_share:
        tally.add(target, "negative-share", res.negative_share(level, n_boot=400), target.negative_share())


def slq_coverage(
    full: Target | None,
    blocks: Sequence[Target],
    seeds: Iterable[int],
    *,
    probes: int,
    steps: int,
    probe: str = "rademacher",
    level: float = 0.95,
    negative_share: bool = False,
    tally: Tally | None = None,
) -> Tally:
    """Seeded SLQ runs on the full matrix and block SLQ in lockstep on the blocks, tallied."""
    tally = tally or Tally()
    mop = DenseBlockOperator([b.matrix for b in blocks], [b.name for b in blocks]) if blocks else None
    for seed in seeds:
        if full is not None:
            res = slq(DenseOperator(full.matrix), num_probes=probes, steps=steps, seed=seed, probe=probe)
            record_slq(tally, full, res, level, negative_share=negative_share)
        if mop is not None:
            for b, res in zip(blocks, slq_lockstep(mop, num_probes=probes, steps=steps, seed=seed, probe=probe),
                              strict=True):  # fmt: skip
                record_slq(tally, b, res, level, negative_share=negative_share)
    return tally
