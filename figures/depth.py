"""Model-level figure: per-matrix metrics against depth (layer index parsed from the name)."""

from __future__ import annotations

import re
from pathlib import Path

from hessian_spectra.figures._mpl import pyplot, save

_LAYER = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")

DEFAULT_METRICS = ("alpha", "stable_rank", "log_spectral_norm", "modified_condition_number")


def layer_index(name: str) -> int | None:
    """The first integer path component of a parameter name (``encoder.layer.3.x`` -> 3), if any."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def plot_metrics_vs_depth(report, path: str | Path, metrics: tuple[str, ...] = DEFAULT_METRICS) -> Path:
    """One panel per metric; one line per tensor role, x = layer index; unlayered matrices omitted."""
    plt = pyplot()
    fig, axes = plt.subplots(len(metrics), 1, figsize=(7, 2.2 * len(metrics)), sharex=True, squeeze=False)
    by_role: dict[str, list] = {}
    for m in report.matrices:
        depth = layer_index(m.name)
        if m.metrics is None or depth is None:
            continue
        by_role.setdefault(f"{m.role}/{m.kind}" if m.kind in ("q", "k", "v") else m.role, []).append(
            (depth, m)
        )
    for ax, key in zip(axes[:, 0], metrics, strict=True):
        for role, items in sorted(by_role.items()):
            pts = sorted((d, getattr(m.metrics, key, None)) for d, m in items)
            pts = [(d, v) for d, v in pts if v is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, lw=1, label=role)
        ax.set_ylabel(key, fontsize=8)
        if key in ("modified_condition_number", "condition_number"):
            ax.set_yscale("log")
    axes[-1, 0].set_xlabel("layer index")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize=7, loc="upper right", ncol=2)
    fig.suptitle(f"weight metrics vs depth: {Path(str(report.source)).name}", fontsize=9)
    return save(fig, path)
