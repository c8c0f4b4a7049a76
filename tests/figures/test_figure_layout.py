"""Every figure family at 5 and at 500 blocks: no text overlaps another text or leaves the canvas, legends
stay off the data, flat blocks are drawn as markers, no power law without a fitted tail (issue #15)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
from hessian_spectra.figures.blocks import draw_block_scales
from hessian_spectra.figures.density import FLAT_TEXT, draw_block_density_grid, draw_full_density
from hessian_spectra.figures.depth import draw_metrics_vs_depth
from hessian_spectra.figures.esd import MIN_TAIL_DRAWN, EsdCanvas
from hessian_spectra.figures.heatmap import draw_js_heatmap, group_means
from support.figures import layout_problems

ROLES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
         "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm")  # fmt: skip


def _blocks(n: int, seed: int = 0) -> list[dict]:
    """``n`` blocks named like a Llama model's tensors (embedding, layers, norm, head), with spectra."""
    rng = np.random.default_rng(seed)
    names = ["model.embed_tokens.weight"]
    layer = 0
    while len(names) < n - 2:
        names += [f"model.layers.{layer}.{r}.weight" for r in ROLES][: n - 2 - len(names)]
        layer += 1
    names += ["model.norm.weight", "lm_head.weight"][: n - len(names)]
    out = []
    for i, name in enumerate(names):
        m = re.search(r"\.(\d+)\.", name)
        scale = 10.0 ** rng.uniform(-4, 1)
        grid = np.linspace(-scale, 3 * scale, 120)
        dens = np.exp(-((grid - rng.uniform(0, scale)) ** 2) / (0.2 * scale) ** 2) / scale
        out.append({"name": name, "group": re.sub(r"\.\d+\.", ".", name).removesuffix(".weight"),
                    "layer": int(m.group(1)) if m else None, "lambda_max": 3 * scale * rng.choice([1, 1, -1]),
                    "trace": scale * rng.normal() * 40, "grid": grid, "density": dens, "flat": i % 7 == 3})  # fmt: skip
    return out


def _check(fig) -> None:
    problems = layout_problems(fig)
    from hessian_spectra.figures._mpl import pyplot

    pyplot().close(fig)
    assert not problems, problems[:10]


@pytest.mark.parametrize("n", [5, 500])
def test_block_density_grid_reads_at_any_size_and_marks_flat_blocks(n):
    blocks = _blocks(n)
    flat = {b["name"] for b in blocks if b["flat"]}
    fig = draw_block_density_grid([b["name"] for b in blocks], [b["grid"] for b in blocks],
                                  [b["density"] for b in blocks], groups=[b["group"] for b in blocks], flat=flat)  # fmt: skip
    texts = [t.get_text() for ax in fig.axes for t in ax.texts] + [ax.get_title() for ax in fig.axes]
    if n == 5:  # one panel per block; the flat one has a marker and a note, no density curve
        panel = next(ax for ax in fig.axes if ax.get_title() == blocks[3]["name"])
        assert [line.get_marker() for line in panel.lines] == ["x"] and FLAT_TEXT in [
            t.get_text() for t in panel.texts
        ]
    else:  # one panel per group, flat blocks counted in the title
        assert len([ax for ax in fig.axes if ax.has_data()]) <= 24
        assert any("flat" in t for t in texts)
    _check(fig)


@pytest.mark.parametrize("n", [5, 500])
def test_block_scales_reads_at_any_size(n):
    blocks = _blocks(n)
    flat = {b["name"] for b in blocks if b["flat"]}
    fig = draw_block_scales(blocks, flat=flat)
    for ax in fig.axes:
        drawn = [t.label1 for t in ax.yaxis._update_ticks() if t.label1.get_text()]
        assert ax.get_yscale() == "log" and 2 <= len(drawn) <= 7
        assert not any("$" in t.get_text() for t in ax.get_yticklabels())  # no mathtext
    _check(fig)


@pytest.mark.parametrize("n", [5, 40, 500])
def test_js_heatmap_reads_at_any_size(n):
    blocks = _blocks(n)
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, (n, n))
    m = np.sqrt((a + a.T) / 2 * (1 - np.eye(n)))
    fig = draw_js_heatmap([b["name"] for b in blocks], m, groups=[b["group"] for b in blocks])
    if n == 500:  # aggregated: group means beside the full matrix
        assert len(fig.axes) == 3 and len(fig.axes[0].get_xticklabels()) <= len({b["group"] for b in blocks})
    _check(fig)


def test_group_means_are_the_means_of_the_group_pairs():
    m = np.array([[0, 0.2, 0.5, 0.7], [0.2, 0, 0.4, 0.6], [0.5, 0.4, 0, 0.1], [0.7, 0.6, 0.1, 0]])
    order, means, counts = group_means(m, ["a", "a", "b", "b"])
    assert order == ["a", "b"] and counts == [2, 2]
    np.testing.assert_allclose(means, [[0.2, (0.5 + 0.7 + 0.4 + 0.6) / 4], [0.55, 0.1]])


def test_full_density_legend_is_off_the_data():
    grid = np.linspace(-1, 5, 400)
    fig = draw_full_density(grid, np.exp(-(grid**2)) + 1e-3, top=[4.0, 4.5, 4.9], bottom=[-0.9])
    _check(fig)


def _weights_report(layers: int):
    roles = ("q", "k", "v", "attn_out", "mlp_up", "mlp_down")
    rng = np.random.default_rng(0)
    mats = [SimpleNamespace(name=f"layers.{i}.{r}.weight", role=r, kind="linear",
                            metrics=SimpleNamespace(alpha=rng.uniform(2, 6), stable_rank=rng.uniform(1, 50),
                                                    log_spectral_norm=rng.uniform(-1, 2),
                                                    modified_condition_number=10 ** rng.uniform(0, 3)))
            for i in range(layers) for r in roles]  # fmt: skip
    return SimpleNamespace(matrices=mats, source="model.safetensors")


@pytest.mark.parametrize("layers", [1, 84])
def test_depth_figure_reads_at_any_size(layers):
    _check(draw_metrics_vs_depth(_weights_report(layers)))


def _esd(sv: np.ndarray, **metrics):
    canvas = EsdCanvas()
    canvas.draw(sv, SimpleNamespace(name="m", **metrics), "model.layers.0.mlp.down_proj.weight")
    return canvas


def test_esd_two_eigenvalues_is_a_rug_without_power_law():
    canvas = _esd(np.array([3.0, 0.5]), alpha=4.0, xmin=0.25, n_tail=2, mp_bulk_edge=1.0)
    ax = canvas.ax
    assert not ax.patches and not [line for line in ax.lines if line.get_color() == "#c44e52"]
    assert any("too few for a density" in " ".join(t.get_text().split()) for t in ax.texts)
    assert len([t for t in ax.get_xticklabels() if t.get_text()]) >= 2
    _check(canvas.fig)


def test_esd_draws_the_power_law_only_over_a_fitted_tail():
    rng = np.random.default_rng(0)
    sv = np.linalg.svd(rng.standard_normal((300, 120)), compute_uv=False)
    lam = np.sort(sv**2)
    drawn = _esd(
        sv, alpha=3.0, xmin=float(lam[-40]), n_tail=40, mp_bulk_edge=float(np.sqrt(300) + np.sqrt(120))
    )
    assert any(line.get_label().startswith("power law") for line in drawn.ax.lines)
    _check(drawn.fig)
    small = _esd(sv, alpha=3.0, xmin=float(lam[-3]), n_tail=MIN_TAIL_DRAWN - 1, mp_bulk_edge=None)
    assert not any(line.get_label().startswith("power law") for line in small.ax.lines)
    assert any("power law not drawn" in " ".join(t.get_text().split()) for t in small.ax.texts)
    _check(small.fig)
