"""Figures of ``spectra track``: a metric against training step, one panel per layer group, every matrix
as a faint line, the group median in black and the worst tensors in colour with their names; and small
line panels for whole-model series (Hessian lambda_max, trace, heterogeneity). Draws what it is given."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hessian_spectra.figures._mpl import pyplot
from hessian_spectra.figures._png import png_bytes

__all__ = ["metric_by_group_figure", "lines_figure", "short_name"]

Series = Sequence[tuple[float, float]]


def short_name(name: str, parts: int = 4) -> str:
    """The last ``parts`` dotted components of a tensor name without ``.weight`` (the layer index stays:
    ``transformer.h.1.mlp.c_proj.weight`` -> ``h.1.mlp.c_proj``), so legends stay readable."""
    base = name.replace(".weight", "") if name.endswith(".weight") or ".weight:" in name else name
    bits = base.split(".")
    return ".".join(bits[-parts:]) if len(bits) > parts else base


def _log_axis(ax, values: Sequence[float]) -> None:
    """Log y axis; plain tick labels when the values span less than two decades (no 9x10^0 labels)."""
    from matplotlib import ticker

    ax.set_yscale("log")
    pos = [v for v in values if v > 0]
    if pos and max(pos) / min(pos) < 100:
        fmt = ticker.FuncFormatter(lambda v, _: f"{v:.3g}")
        ax.yaxis.set_major_formatter(fmt)
        ax.yaxis.set_minor_formatter(fmt)


def _median_line(series: Mapping[str, Series]) -> tuple[list[float], list[float]]:
    import numpy as np

    xs = sorted({x for pts in series.values() for x, _ in pts})
    med = []
    for x in xs:
        vals = [v for pts in series.values() for xx, v in pts if xx == x]
        med.append(float(np.median(vals)))
    return xs, med


def metric_by_group_figure(
    data: Mapping[str, Mapping[str, Series]],
    metric: str,
    *,
    log: bool = False,
    worst: Mapping[str, Sequence[str]] | None = None,
    hlines: Mapping[str, float] | None = None,
    xlabel: str = "step",
    title: str | None = None,
) -> bytes:
    """PNG bytes: one panel per group of ``data`` (group -> matrix -> [(step, value)]); ``worst[group]``
    names drawn in colour, ``hlines[group]`` a dashed reference (e.g. a clip threshold)."""
    plt = pyplot()
    groups = sorted(data)
    ncols = min(3, max(1, len(groups)))
    nrows = (len(groups) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), squeeze=False)
    for ax in axes.flat[len(groups) :]:
        ax.set_visible(False)
    for ax, g in zip(axes.flat, groups, strict=False):
        series = data[g]
        named = [n for n in (worst or {}).get(g, []) if n in series]
        for name, pts in series.items():
            if name not in named and pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color="0.8", lw=0.7, zorder=1)
        for name in named:
            pts = series[name]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.3, marker="o", ms=2.5, label=short_name(name),
                    zorder=3)  # fmt: skip
        xs, med = _median_line(series)
        if xs:
            ax.plot(xs, med, color="black", lw=2.0, label=f"median of {len(series)}", zorder=2)
        if hlines and g in hlines:
            ax.axhline(hlines[g], color="crimson", ls="--", lw=1.0, label=f"c = {hlines[g]:.3g}")
        if log:
            _log_axis(ax, [v for pts in series.values() for _, v in pts])
        ax.set_title(g, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(metric, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="best")
    fig.suptitle(title or f"{metric} over training", fontsize=10)
    fig.tight_layout()
    return png_bytes(fig)


def lines_figure(
    panels: Sequence[tuple[str, Mapping[str, Series], bool]], *, xlabel: str = "step", title: str = ""
) -> bytes:
    """PNG bytes: one panel per ``(ylabel, {label: [(step, value)]}, log)``."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.0), squeeze=False)
    for ax, (ylabel, lines, log) in zip(axes[0], panels, strict=True):
        for label, pts in lines.items():
            if pts:
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    marker="o",
                    ms=3,
                    lw=1.2,
                    label=short_name(label),
                )
        values = [v for pts in lines.values() for _, v in pts]
        if log and any(v <= 0 for v in values):
            ax.set_yscale("symlog")
        elif log:
            _log_axis(ax, values)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        if lines:
            ax.legend(fontsize=6, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return png_bytes(fig)
