"""Heterogeneity maths against exact block spectra: JS conventions, the three-block quadratic, tiny models."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from analyses.heterogeneity import (
    DEFAULT_CONVENTIONS,
    SCALES_KEPT,
    SHAPE_ONLY,
    BlockSpectrum,
    analyze_heterogeneity,
    block_densities,
    block_group,
    js_distance,
    js_matrix,
    scale_spread,
)
from spectra.linop import DenseBlockOperator
from spectra.quadrature import slq_lockstep


def _rotated(eigs: np.ndarray, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.as_tensor(eigs)) @ q.T


def _quadratic(arrangement: str) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    groups = [rng.uniform(1, 2, 30), rng.uniform(100, 200, 30), rng.uniform(1e4, 2e4, 30)]
    if arrangement == "heterogeneous":
        return groups
    return [np.concatenate([g[10 * i : 10 * i + 10] for g in groups]) for i in range(3)]


def test_js_distance_closed_forms():
    p = np.array([1.0, 0.0, 0.0, 0.0])
    q = np.array([0.0, 0.0, 0.5, 0.5])
    assert js_distance(p, p) == pytest.approx(0.0, abs=1e-12)
    assert js_distance(p, q) == pytest.approx(1.0, abs=1e-12)  # disjoint supports, log base 2
    # half overlap: JS divergence of (1,0) vs (1/2,1/2) is 1 - 3/4 log2(3) + 1/2 ... closed form below
    a, b = np.array([1.0, 0.0]), np.array([0.5, 0.5])
    m = (a + b) / 2
    jsd = 0.5 * np.sum(a[a > 0] * np.log2(a[a > 0] / m[a > 0])) + 0.5 * np.sum(b * np.log2(b / m))
    assert js_distance(a, b) == pytest.approx(np.sqrt(jsd), rel=1e-12)
    from scipy.spatial.distance import jensenshannon

    r = np.random.default_rng(1).random((2, 50))
    assert js_distance(r[0], r[1]) == pytest.approx(jensenshannon(r[0], r[1], base=2), rel=1e-10)


def test_densities_are_probability_vectors_and_conventions_named():
    spectra = [BlockSpectrum.exact(f"b{i}", e) for i, e in enumerate(_quadratic("heterogeneous"))]
    for conv in DEFAULT_CONVENTIONS:
        grid, dens = block_densities(spectra, conv)
        assert dens.shape == (3, conv.grid_points) and np.allclose(dens.sum(1), 1.0)
        text = conv.describe()
        for word in ("grid", "sigma", "negative", "axis"):
            assert word in text
    # shape-only is invariant to rescaling a block; scales-kept is not
    scaled = [spectra[0], BlockSpectrum.exact("b1x", spectra[0].nodes * 1000.0)]
    assert js_matrix(block_densities(scaled, SHAPE_ONLY)[1])[0, 1] < 1e-6
    assert js_matrix(block_densities(scaled, SCALES_KEPT)[1])[0, 1] > 0.9


@pytest.mark.parametrize("arrangement", ["heterogeneous", "homogeneous"])
def test_quadratic_classified_and_slq_matches_exact(arrangement):
    eigs = _quadratic(arrangement)
    exact = analyze_heterogeneity([BlockSpectrum.exact(f"block{i}", e) for i, e in enumerate(eigs)])
    assert exact.verdict == arrangement
    mop = DenseBlockOperator([_rotated(e, i) for i, e in enumerate(eigs)])
    results = slq_lockstep(mop, num_probes=80, steps=30, seed=0)
    est = analyze_heterogeneity(
        [BlockSpectrum.from_slq(r.name, r.dim, r.nodes, r.weights, trace=r.trace) for r in results]
    )
    assert est.verdict == arrangement
    for name in exact.js:
        assert np.max(np.abs(est.js[name] - exact.js[name])) <= 0.02, name
    # block traces and lambda_max carry the scales: 4 decades apart when heterogeneous
    spread = scale_spread(exact.blocks)["lambda_max"]["ratio"]
    assert (spread > 1000) == (arrangement == "heterogeneous")


def test_drivers_name_the_odd_group():
    rng = np.random.default_rng(2)
    base = [BlockSpectrum.exact(f"layers.{i}.mlp.fc_in.weight", rng.uniform(1, 2, 64)) for i in range(4)]
    odd = [BlockSpectrum.exact(f"layers.{i}.attn.q_proj.weight", rng.uniform(1e3, 2e3, 64)) for i in range(2)]
    same = [BlockSpectrum.exact(f"layers.{i}.attn.v_proj.weight", rng.uniform(1, 2, 64)) for i in range(2)]
    report = analyze_heterogeneity(base + odd + same)
    top = report.drivers["scales-kept-log"][0]
    assert top["group"] == "qk" and top["contribution"] > 0
    mlp = next(r for r in report.drivers["scales-kept-log"] if r["group"] == "mlp")
    assert mlp["mean_js_within"] < 0.3 < top["mean_js_to_others"]
    d = report.to_dict()
    assert d["verdict"] == "heterogeneous" and len(d["js_matrix"]["shape-only"]) == 8


def test_block_groups_from_names():
    assert block_group("h.0.attn.q_proj.weight") == "qk"
    assert block_group("h.0.attn.k_proj.weight[head 1]") == "qk"
    assert block_group("h.0.attn.v_proj.weight") == "v"
    assert block_group("h.0.attn.o_proj.weight") == "attn_out"
    assert block_group("h.1.mlp.fc_in.weight") == "mlp"
    assert block_group("wte.weight") == "embedding"
    assert block_group("h.0.ln_1.weight") == "norm"
    assert block_group("convs.1.weight") == "conv"


def test_small_blocks_left_out_of_js_but_kept_in_spread():
    rng = np.random.default_rng(3)
    spectra = [BlockSpectrum.exact("a", rng.uniform(1, 2, 40)), BlockSpectrum.exact("b", rng.uniform(1, 2, 40)),
               BlockSpectrum.exact("tiny.bias", [500.0, 600.0])]  # fmt: skip
    r = analyze_heterogeneity(spectra)
    assert r.extra["excluded_from_js"] == ["tiny.bias"] and r.js["scales-kept"].shape == (2, 2)
    assert r.scale_spread["lambda_max"]["max_block"] == "tiny.bias"


def test_paper_convention_absolute_kernel_integrates_to_one_and_keeps_small_blocks_apart():
    """The 'paper' convention (absolute sigma^2 = 1e-5): bin masses match the point-sampled Gaussian density
    times the grid step when the grid resolves the kernel; on a wide range the grid is refined (50,000
    points would give step ~9 sigma, where point samples of a spike lose or double mass); blocks at
    1e-3 and 1e-2 stay apart next to a block at 1e2, where the relative-kernel scales-kept merges them."""
    import math

    from analyses.heterogeneity import PAPER, SCALES_KEPT_LOG

    rng = np.random.default_rng(4)
    narrow = [
        BlockSpectrum.exact("a", rng.uniform(0.1, 0.5, 40)),
        BlockSpectrum.exact("b", rng.uniform(-0.2, 0.3, 40)),
    ]
    grid, dens = block_densities(narrow, PAPER)
    assert grid.size == 50_000 and np.allclose(dens.sum(1), 1.0)
    lo, hi = min(b.lambda_min for b in narrow), max(b.lambda_max for b in narrow)
    assert grid[0] == pytest.approx(lo - 1.0, abs=1e-12) and grid[-1] == pytest.approx(hi + 1.0, abs=1e-12)
    step, s = grid[1] - grid[0], math.sqrt(1e-5)
    assert step < s / 10
    for d, b in zip(dens, narrow, strict=True):
        z = (grid[None, :] - b.nodes[:, None]) / s
        point = b.weights @ np.exp(-0.5 * z * z) / (s * math.sqrt(2 * math.pi)) * step
        assert point.sum() == pytest.approx(1.0, abs=1e-6)
        assert np.abs(point - d).max() <= 1e-3 * d.max()

    small = [BlockSpectrum.exact("s1", rng.uniform(1e-3, 2e-3, 40)), BlockSpectrum.exact("s2", rng.uniform(1e-2, 2e-2, 40)),
             BlockSpectrum.exact("big", rng.uniform(100, 200, 40))]  # fmt: skip
    grid, dens = block_densities(small, PAPER)
    assert grid.size > 50_000 and grid[1] - grid[0] <= s / 2 and np.allclose(dens.sum(1), 1.0)
    assert js_matrix(dens)[0, 1] > 0.9
    assert js_matrix(block_densities(small, SCALES_KEPT)[1])[0, 1] < 0.05
    assert "sigma^2 = 1e-05" in PAPER.describe() and "absolute" in PAPER.describe()
    d = PAPER.to_dict()
    assert d["sigma_fraction"] is None and d["sigma_abs"] == pytest.approx(s) and d["grid_points"] == 50_000
    # past max_grid_points the bins set the resolution: warned, masses still exact
    capped = dataclasses.replace(PAPER, max_grid_points=50_000)
    with pytest.warns(UserWarning, match="bin width"):
        grid, dens = block_densities(small, capped)
    assert grid.size == 50_000 and np.allclose(dens.sum(1), 1.0)
    with pytest.raises(ValueError):
        dataclasses.replace(PAPER, sigma_fraction=0.01)
    assert SCALES_KEPT_LOG.sigma_abs is None
