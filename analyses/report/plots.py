"""The report's figures: PNG bytes of every figure the available results allow, and their captions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["make_figures", "FIGURE_CAPTIONS"]


def make_figures(hessian: Any, heterogeneity: Any, weights: Any) -> dict[str, bytes]:
    """PNG bytes of every report figure that the available results allow (keys are figure ids)."""
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
        flat = {f.name for f in heterogeneity.flat} if heterogeneity is not None else set()
        exact = set(hessian.exact_block_names)
        names, grids, dens = [], [], []
        for b, r in zip(hessian.blocks, hessian.block_results, strict=True):
            d = r.density(num_points=300)
            tag = " [flat]" if b.name in flat else (" [exact]" if b.name in exact else "")
            names.append(b.name + tag)
            grids.append(d.grid)
            dens.append(d.values)
        figs["block_densities"] = plot_block_density_grid(
            names, grids, dens,
            title="block spectral densities, each on its own eigenvalue range ([exact]: every eigenvalue; "
            "[flat]: zero up to rounding, left out; else block SLQ)",
        )  # fmt: skip
        from hessian_spectra.analyses.heterogeneity.blocks import block_group, block_layer

        rows = [
            {"name": b.name, "group": block_group(b.name), "layer": block_layer(b.name), "lambda_max": r.ritz_max,
             "trace": r.trace}
            for b, r in zip(hessian.blocks, hessian.block_results, strict=True)
        ]  # fmt: skip
        figs["block_scales"] = plot_block_scales(rows)
    if heterogeneity is not None and len(heterogeneity.blocks) >= 2:
        for conv in heterogeneity.conventions:
            figs[f"js_heatmap_{conv.name}"] = plot_js_heatmap(
                heterogeneity.names,
                heterogeneity.js[conv.name],
                title=f"JS distance between block spectra ({conv.name})",
            )
    if weights is not None and weights.matrices:
        import tempfile

        from hessian_spectra.figures.depth import plot_metrics_vs_depth

        with tempfile.TemporaryDirectory() as tmp:
            path = plot_metrics_vs_depth(weights, Path(tmp) / "depth.png")
            figs["weights_depth"] = path.read_bytes()
    return figs


FIGURE_CAPTIONS = {
    "full_density": "Full-model Hessian spectral density (SLQ, log scale) with the Lanczos top and bottom eigenvalues marked.",
    "block_densities": "Spectral density of every Hessian block, each on its own eigenvalue range: exact blocks "
    "from every eigenvalue, the rest by block SLQ; flat blocks (zero up to rounding) are marked.",
    "block_scales": "Block lambda_max and trace against depth, one series per block group.",
    "weights_depth": "Weight-spectrum metrics against depth, one line per tensor role.",
}


def _caption(key: str) -> str:
    if key.startswith("js_heatmap_"):
        return f"Pairwise Jensen-Shannon distance between block spectra, convention '{key[len('js_heatmap_') :]}'."
    return FIGURE_CAPTIONS.get(key, key)
