"""Heterogeneity on tiny real models against exact block spectra (dense Hessian blocks from tests/oracles).

Ordering at init (issue 4): measured with exact per-tensor blocks, blocks with fewer than 16 parameters left
out of the JS matrices. The relative-kernel scales-kept JS (linear common grid, sigma = 1% of the span)
orders the tiny GPT above the tiny CNN, and the block-scale spread orders GPT > CNN > MLP as in REFERENCE.md
section 3; but that JS does NOT order the GPT above our tiny MLPs: on a linear common grid with a relative
kernel, blocks whose lambda_max are 3-20x apart (the MLP) stay distinguishable, while blocks 1000x below the
largest (most of the GPT) collapse to one spike at zero and look alike. Every MLP we tried (tanh/ReLU, depth
1-4, width 16-32, 16-256 samples) scored 0.15-0.57 against the GPT's 0.15; that reversal is pinned below as
a strict xfail, kept as documentation that the ordering depends on the convention.

Under the paper's convention (``paper``: absolute Gaussian kernel sigma^2 = 1e-5 on a common linear grid,
scales kept) the same models order GPT 0.63 > MLP 0.36 > CNN 0.09, so small-scale blocks stay apart and the
issue's ordering holds; it is asserted below. REFERENCE's own numbers (0.248 / 0.091 / 0.140) are not
reproduced by either convention on these models (only the CNN's 0.09 matches), so the issue's
"scales-kept" is not mapped to ``paper`` by name: both are reported.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analyses.demo import TinyCNN, TinyGPT, TinyMLP, markov_tokens, template_images
from analyses.heterogeneity import (
    DEFAULT_CONVENTIONS,
    PAPER,
    BlockSpectrum,
    analyze_heterogeneity,
    spectra_from_hessian,
)
from spectra.data import cross_entropy
from tests.oracles import exact_hessian


def _exact_blocks(model, batches) -> list[BlockSpectrum]:
    out = []
    for name, _ in model.named_parameters():
        H = exact_hessian(model, batches, cross_entropy, params=[name])
        out.append(BlockSpectrum.exact(name, torch.linalg.eigvalsh(H).numpy()))
    return out


def _gpt():
    torch.manual_seed(0)
    return TinyGPT(vocab=16, d_model=8, n_heads=2, n_layers=1, seq_len=8).double(), markov_tokens(
        1, 8, 8, 16, 0
    )


@pytest.fixture(scope="module")
def at_init():
    gpt, tok = _gpt()
    torch.manual_seed(0)
    cnn = TinyCNN().double()
    images = [(x.double(), y) for x, y in template_images(1, 16, 4, 8, 0)]
    torch.manual_seed(0)
    mlp = TinyMLP(inputs=16, hidden=16, depth=3).double()
    flat = [(x.double().flatten(1), y) for x, y in template_images(1, 16, 4, 4, 0)]
    convs = (*DEFAULT_CONVENTIONS, PAPER)
    return {
        "gpt": analyze_heterogeneity(_exact_blocks(gpt, tok), convs),
        "cnn": analyze_heterogeneity(_exact_blocks(cnn, images), convs),
        "mlp": analyze_heterogeneity(_exact_blocks(mlp, flat), convs),
    }


def test_scales_kept_orders_gpt_above_cnn_and_spread_orders_all(at_init):
    js = {k: r.mean_js["scales-kept"] for k, r in at_init.items()}
    assert js["gpt"] > js["cnn"] + 0.03  # measured 0.155 vs 0.093 (REFERENCE: 0.248 vs 0.091)
    spread = {k: r.scale_spread["lambda_max"]["ratio"] for k, r in at_init.items()}
    assert spread["gpt"] > 10 * spread["cnn"] > 10 * spread["mlp"]  # measured ~5300x, ~160x, ~17x
    assert at_init["gpt"].verdict == "heterogeneous" and at_init["cnn"].verdict == "homogeneous"


@pytest.mark.xfail(
    strict=True,
    reason="scales-kept JS on a linear grid is not monotone in the scale spread: "
    "tiny MLP measured 0.34 > tiny GPT 0.155 (REFERENCE reports MLP 0.140); see module docstring",
)
def test_scales_kept_orders_gpt_above_mlp(at_init):
    assert at_init["gpt"].mean_js["scales-kept"] > at_init["mlp"].mean_js["scales-kept"]


def test_paper_convention_orders_gpt_above_cnn_and_mlp(at_init):
    """Issue 4's ordering under the paper's absolute-kernel convention (sigma^2 = 1e-5), same models.

    The GPT's pooled range (about -389 to 971) needs a refined grid (~861k points at step sigma/2; 50,000
    points would be a step of ~9 sigma); the CNN and MLP fit in 50,000 points.
    """
    js = {k: r.mean_js["paper"] for k, r in at_init.items()}
    assert js["gpt"] > js["mlp"] + 0.1 and js["gpt"] > js["cnn"] + 0.1  # measured 0.634, 0.362, 0.095
    assert js["cnn"] == pytest.approx(0.091, abs=0.02)  # REFERENCE's CNN number


@pytest.mark.slow
def test_block_slq_js_matches_exact_on_tiny_transformer():
    """~60-80 s on the shared 2-core machine (24 probes x 64 lockstep steps over 17 blocks)."""
    from spectra.hessian_probe import HessianSettings, run_hessian

    gpt, tok = _gpt()
    exact = analyze_heterogeneity(_exact_blocks(gpt, tok))
    settings = HessianSettings(full=False, block_probes=24, block_steps=64, seed=0)
    rep = run_hessian(gpt, tok, cross_entropy, settings)
    est = analyze_heterogeneity(spectra_from_hessian(rep))
    assert est.names == exact.names
    for conv in ("scales-kept", "shape-only"):
        diff = np.abs(est.js[conv] - exact.js[conv]).max()
        assert diff <= 0.03, (conv, diff)
    # block extremes and traces are right too
    for b, e in zip(est.blocks, exact.blocks, strict=True):
        assert b.lambda_max == pytest.approx(e.lambda_max, rel=1e-6, abs=1e-9)
