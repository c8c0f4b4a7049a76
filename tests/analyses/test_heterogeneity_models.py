"""Heterogeneity on tiny real models against exact block spectra (dense Hessian blocks from tests/oracles).

Ordering at init (issue 4), measured with exact per-tensor blocks, blocks with fewer than 16 parameters left
out of the JS matrices; block lambda_max spreads 5,336x (GPT) / 160x (CNN) / 17x (MLP). Mean pairwise JS:

=====================  =====  =====  =====
convention             GPT    CNN    MLP
=====================  =====  =====  =====
scales-kept            0.611  0.551  0.550
shape-only             0.276  0.243  0.468
scales-kept-log        0.561  0.393  0.538
scales-kept-relative   0.155  0.093  0.339
paper                  0.634  0.094  0.361
=====================  =====  =====  =====

``scales-kept`` smooths each block at 1% of its own eigenvalue range on one common linear axis, so the GPT's
many blocks 1000x below its largest stay apart, and JS does not change when the loss is multiplied by a
constant; it orders the GPT above the CNN and the MLP (asserted). ``scales-kept-relative`` (one kernel of
1% of the pooled span, the earlier ``scales-kept``) merges those blocks into one spike at zero and orders
the MLP above the GPT (pinned below as the reason for the change). REFERENCE.md section 3's numbers for its
own tiny models (0.248 / 0.091 / 0.140) are reproduced by no convention here; the relative kernel matches
its CNN (0.093). JS from block SLQ (24 probes x 64 steps) against exact on the GPT, max over pairs:
scales-kept 0.013, shape-only 0.027, scales-kept-relative 0.004 (asserted <= 0.03, slow test); paper 0.083
and scales-kept-log 0.20 exceed it (their resolution is finer than block SLQ gives near zero), so neither
is the default.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hessian_spectra.analyses.demo import TinyCNN, TinyGPT, TinyMLP, markov_tokens, template_images
from hessian_spectra.analyses.heterogeneity.blocks import BlockSpectrum, spectra_from_hessian
from hessian_spectra.analyses.heterogeneity.conventions import CONVENTIONS
from hessian_spectra.analyses.heterogeneity.verdict import analyze_heterogeneity
from hessian_spectra.curvature.losses import cross_entropy
from support.oracles import exact_hessian


def _exact_blocks(model, batches, loss=cross_entropy) -> list[BlockSpectrum]:
    out = []
    for name, _ in model.named_parameters():
        H = exact_hessian(model, batches, loss, params=[name])
        out.append(BlockSpectrum.exact(name, torch.linalg.eigvalsh(H).numpy()))
    return out


def _gpt():
    torch.manual_seed(0)
    return TinyGPT(vocab=16, d_model=8, n_heads=2, n_layers=1, seq_len=8).double(), markov_tokens(
        1, 8, 8, 16, 0
    )


def _models():
    gpt, tok = _gpt()
    torch.manual_seed(0)
    cnn = TinyCNN().double()
    images = [(x.double(), y) for x, y in template_images(1, 16, 4, 8, 0)]
    torch.manual_seed(0)
    mlp = TinyMLP(inputs=16, hidden=16, depth=3).double()
    flat = [(x.double().flatten(1), y) for x, y in template_images(1, 16, 4, 4, 0)]
    return {"gpt": (gpt, tok), "cnn": (cnn, images), "mlp": (mlp, flat)}


@pytest.fixture(scope="module")
def at_init():
    convs = tuple(CONVENTIONS.values())
    return {
        k: analyze_heterogeneity(_exact_blocks(m, b), convs, dtype="float64")
        for k, (m, b) in _models().items()
    }


def test_scales_kept_orders_gpt_above_cnn_and_mlp(at_init):
    """Issue 4's ordering under the default scales-kept (per-block kernel; module docstring)."""
    js = {k: r.mean_js["scales-kept"] for k, r in at_init.items()}
    assert js["gpt"] > js["cnn"] + 0.03 and js["gpt"] > js["mlp"] + 0.03  # measured 0.611, 0.551, 0.550
    spread = {k: r.scale_spread["lambda_max"]["ratio"] for k, r in at_init.items()}
    assert spread["gpt"] > 10 * spread["cnn"] > 10 * spread["mlp"]  # measured ~5300x, ~160x, ~17x
    assert at_init["gpt"].verdict == "heterogeneous" and at_init["cnn"].verdict == "homogeneous"


def test_relative_kernel_merges_the_gpt_small_blocks(at_init):
    """Why scales-kept changed: with one kernel of 1% of the pooled span, the GPT's blocks far below its
    largest merge and its JS falls under the MLP's, though it still ranks above the CNN (REFERENCE's
    0.248 vs 0.091)."""
    js = {k: r.mean_js["scales-kept-relative"] for k, r in at_init.items()}
    assert js["gpt"] > js["cnn"] + 0.03  # measured 0.155 vs 0.093
    assert js["mlp"] > js["gpt"] + 0.1  # measured 0.339 vs 0.155
    gpt = at_init["gpt"]
    small = [
        i for i, b in enumerate(gpt.blocks) if b.lambda_max < 1e-2 * max(c.lambda_max for c in gpt.blocks)
    ]
    rows, cols = np.triu_indices(len(small), 1)
    pairs = (np.array(small)[rows], np.array(small)[cols])
    # measured over the 8 blocks below 1% of the largest lambda_max: max 0.006 against mean 0.42
    assert gpt.js["scales-kept-relative"][pairs].max() < 0.05 and gpt.js["scales-kept"][pairs].mean() > 0.3


def test_paper_convention_orders_gpt_above_cnn_and_mlp(at_init):
    """Issue 4's ordering also holds under the paper's absolute-kernel convention (sigma^2 = 1e-5).

    The GPT's pooled range (about -389 to 971) makes a lattice of ~861k points at step sigma/2, of which
    the sparse bins keep ~6.5k; the CNN and MLP fit in the 50,000-point lattice.
    """
    js = {k: r.mean_js["paper"] for k, r in at_init.items()}
    assert js["gpt"] > js["mlp"] + 0.1 and js["gpt"] > js["cnn"] + 0.1  # measured 0.634, 0.362, 0.094
    assert js["cnn"] == pytest.approx(0.091, abs=0.02)  # REFERENCE's CNN number


def test_loss_scaled_by_1000_changes_paper_but_not_scales_kept(at_init):
    """Hessians of 1000 x the loss (recomputed, not rescaled): scale-free conventions give the same JS."""
    gpt, tok = _gpt()
    scaled = analyze_heterogeneity(
        _exact_blocks(gpt, tok, lambda m, b: 1000.0 * cross_entropy(m, b)), tuple(CONVENTIONS.values())
    )
    base = at_init["gpt"]
    for name in base.js:
        diff = np.abs(scaled.js[name] - base.js[name]).max()
        assert (diff > 0.1) if name == "paper" else (diff < 1e-4), (name, diff)
    # the scale statistics, the flat blocks and the verdict do not move either (measured <= 1e-13)
    for name, value in base.statistics.items():
        assert scaled.statistics[name] == pytest.approx(value, abs=1e-9), name
    assert [f.name for f in scaled.flat] == [f.name for f in base.flat] and scaled.verdict == base.verdict


@pytest.mark.parametrize("which", ["gpt", "cnn", "mlp"])
def test_block_slq_statistics_within_003_of_exact(at_init, which):
    """The scale statistics from block SLQ (exact path off, 4 probes x 16 steps, the suite's budget)
    against the same statistics from the exact blocks (dense oracle): the verdict's sharpness-gap and the
    other spectral-radius statistics within 0.03 decades (measured <= 4e-9: extreme Ritz values converge
    first). ``rms-iqr`` is not held to it: it rests on a 4-probe Hutchinson estimate of tr(H_bb^2) and
    measured 0.18 / 0.50 / 0.02 off, one reason it is not the verdict's statistic."""
    from hessian_spectra.curvature.probe import HessianSettings, run_hessian

    model, batches = _models()[which]
    settings = HessianSettings(
        full=False, block_probes=4, block_steps=16, seed=0, exact=False, dtype="float64"
    )
    est = analyze_heterogeneity(
        spectra_from_hessian(run_hessian(model, batches, cross_entropy, settings)), ()
    )
    exact = at_init[which]
    assert [b.name for b in est.all_blocks] == [b.name for b in exact.all_blocks]
    assert all(b.source == "slq" for b in est.all_blocks) and all(
        b.source == "exact" for b in exact.all_blocks
    )
    for name, value in exact.statistics.items():
        if name != "rms-iqr":
            assert abs(est.statistics[name] - value) <= 0.03, (name, est.statistics[name], value)
    assert est.verdict == exact.verdict and est.statistic["name"] == "sharpness-gap"


@pytest.mark.slow
def test_block_slq_js_matches_exact_on_tiny_transformer():
    """~25-80 s on the shared 2-core machine (24 probes x 64 lockstep steps over 17 blocks). Measured max
    |JS_SLQ - JS_exact|: scales-kept 0.013, shape-only 0.027, scales-kept-relative 0.004."""
    from hessian_spectra.curvature.probe import HessianSettings, run_hessian

    gpt, tok = _gpt()
    convs = tuple(CONVENTIONS[n] for n in ("scales-kept", "shape-only", "scales-kept-relative"))
    exact = analyze_heterogeneity(_exact_blocks(gpt, tok), convs)
    settings = HessianSettings(full=False, block_probes=24, block_steps=64, seed=0, exact=False)
    rep = run_hessian(gpt, tok, cross_entropy, settings)
    est = analyze_heterogeneity(spectra_from_hessian(rep), convs)
    assert est.names == exact.names
    for conv in exact.js:
        diff = np.abs(est.js[conv] - exact.js[conv]).max()
        assert diff <= 0.03, (conv, diff)
    # block extremes and traces are right too
    for b, e in zip(est.blocks, exact.blocks, strict=True):
        assert b.lambda_max == pytest.approx(e.lambda_max, rel=1e-6, abs=1e-9)
