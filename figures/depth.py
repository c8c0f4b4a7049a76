"""Model-level figure: per-matrix metrics against depth (layer index parsed from the name), the legend
outside the panels."""

from __future__ import annotations

import math
import re
from pathlib import Path

from hessian_spectra.figures._mpl import linear_ticks, log_ticks, pyplot, save

_LAYER = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")

DEFAULT_METRICS = ("alpha", "stable_rank", "log_spectral_norm", "modified_condition_number")
LOG_METRICS = ("modified_condition_number", "condition_number")


def layer_index(name: str) -> int | None:
    """The first integer path component of a parameter name (``encoder.layer.3.x`` -> 3), if any."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def draw_metrics_vs_depth(report, metrics: tuple[str, ...] = DEFAULT_METRICS):
    """One panel per metric; one line per tensor role, x = layer index; unlayered matrices omitted."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    fig, axes = plt.subplots(len(metrics), 1, figsize=(8.2, 2.0 * len(metrics)), sharex=True, squeeze=False,
                             layout="constrained")  # fmt: skip
    by_role: dict[str, list] = {}
    for m in report.matrices:
        depth = layer_index(m.name)
        if m.metrics is None or depth is None:
            continue
        by_role.setdefault(f"{m.role}/{m.kind}" if m.kind in ("q", "k", "v") else m.role, []).append(
            (depth, m)
        )
    for ax, key in zip(axes[:, 0], metrics, strict=True):
        values = []
        for role, items in sorted(by_role.items()):
            pts = sorted((d, getattr(m.metrics, key, None)) for d, m in items)
            pts = [(d, v) for d, v in pts if v is not None and math.isfinite(v)]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, lw=1, label=role)
                values += [p[1] for p in pts]
        ax.set_ylabel(key.replace("_", " "), fontsize=7)
        positive = [v for v in values if v > 0]
        if key in LOG_METRICS and positive:
            ax.set_yscale("log")
            log_ticks(ax.yaxis, min(positive), max(positive), max_ticks=4)
        else:
            linear_ticks(ax.yaxis, 4)
        ax.tick_params(labelsize=7)
    depths = [d for items in by_role.values() for d, _ in items]
    if depths:
        axes[-1, 0].set_xlim(min(depths) - 0.5, max(depths) + 0.5)
    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(nbins=12, integer=True))
    axes[-1, 0].set_xlabel("layer index", fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize=7, loc="outside right upper", frameon=False,
                   ncols=max(1, math.ceil(len(labels) / 24)))  # fmt: skip
    fig.suptitle(f"weight metrics vs depth: {Path(str(report.source)).name}", fontsize=9)
    return fig


def plot_metrics_vs_depth(report, path: str | Path, metrics: tuple[str, ...] = DEFAULT_METRICS) -> Path:
    """Write :func:`draw_metrics_vs_depth` to ``path`` (PNG, atomically)."""
    return save(draw_metrics_vs_depth(report, metrics), path)


def metrics_vs_depth_png(report, metrics: tuple[str, ...] = DEFAULT_METRICS) -> bytes:
    """PNG bytes of :func:`draw_metrics_vs_depth` (for the report)."""
    from hessian_spectra.figures._png import png_bytes

    return png_bytes(draw_metrics_vs_depth(report, metrics))
