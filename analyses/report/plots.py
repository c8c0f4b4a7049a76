"""The report's figures: PNG bytes of every figure the available results allow, and their captions."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

__all__ = ["make_figures", "FIGURE_CAPTIONS", "caption"]


def make_figures(
    hessian: Any, heterogeneity: Any, weights: Any, *, flat: Collection[str] = ()
) -> dict[str, bytes]:
    """PNG bytes of every report figure that the available results allow (keys are figure ids).
    ``flat``: names of blocks whose Hessian is zero up to rounding (drawn as markers, not densities)."""
    from hessian_spectra.analyses.heterogeneity.blocks import block_group, block_layer
    from hessian_spectra.figures.blocks import plot_block_scales
    from hessian_spectra.figures.density import plot_block_density_grid, plot_full_density
    from hessian_spectra.figures.heatmap import plot_js_heatmap

    figs: dict[str, bytes] = {}
    if hessian is not None and hessian.density is not None:
        d = hessian.density.density(num_points=800)
        lz = hessian.lanczos
        figs["full_density"] = plot_full_density(
            d.grid, d.values, top=() if lz is None else lz.top, bottom=() if lz is None else lz.bottom
        )
    if hessian is not None and hessian.block_results:
        flat = set(flat)
        exact = set(hessian.exact_block_names) - flat
        names, grids, dens = [], [], []
        for b, r in zip(hessian.blocks, hessian.block_results, strict=True):
            d = r.density(num_points=300)
            names.append(b.name + (" [exact]" if b.name in exact else ""))
            grids.append(d.grid)
            dens.append(d.values)
        figs["block_densities"] = plot_block_density_grid(
            names, grids, dens, groups=[block_group(b.name) for b in hessian.blocks], flat=flat,
            title="block spectral densities, each on its own eigenvalue range ([exact]: every eigenvalue; else "
            "block SLQ; flat: zero up to rounding)",
        )  # fmt: skip
        rows = [
            {"name": b.name, "group": block_group(b.name), "layer": block_layer(b.name), "lambda_max": r.ritz_max,
             "trace": r.trace}
            for b, r in zip(hessian.blocks, hessian.block_results, strict=True)
        ]  # fmt: skip
        figs["block_scales"] = plot_block_scales(rows, flat=set(flat))
    if heterogeneity is not None and len(heterogeneity.blocks) >= 2:
        groups = [b.group for b in heterogeneity.blocks]
        for conv in heterogeneity.conventions:
            figs[f"js_heatmap_{conv.name}"] = plot_js_heatmap(
                heterogeneity.names, heterogeneity.js[conv.name], groups=groups,
                title=f"JS distance between block spectra ({conv.name})",
            )  # fmt: skip
    if weights is not None and weights.matrices:
        from hessian_spectra.figures.depth import metrics_vs_depth_png

        figs["weights_depth"] = metrics_vs_depth_png(weights)
    return figs


FIGURE_CAPTIONS = {
    "full_density": "Full-model Hessian spectral density (SLQ, log scale) with the Lanczos top and bottom eigenvalues marked.",
    "block_densities": "Spectral density of every Hessian block, each on its own eigenvalue range (blocks tagged exact: "
    "every eigenvalue from the block's columns; the rest: block SLQ): one panel per block, or per block group on a normalised "
    "axis when there are many blocks; flat blocks are marked, not drawn as densities.",
    "block_scales": "|Block lambda_max| and |block trace| against depth, one series per block group (hollow: negative; "
    "crosses: flat blocks).",
    "weights_depth": "Weight-spectrum metrics against depth, one line per tensor role.",
}


def caption(key: str) -> str:
    """The caption of a figure id."""
    if key.startswith("js_heatmap_"):
        return (f"Pairwise Jensen-Shannon distance between block spectra, convention '{key[len('js_heatmap_'):]}' "
                "(by group beyond 40 blocks; every pair in report.json).")  # fmt: skip
    return FIGURE_CAPTIONS.get(key, key)
