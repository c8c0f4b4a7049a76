"""Per-matrix empirical spectral density (ESD): log-log histogram, power-law fit, MP bulk edge."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from hessian_spectra.figures._mpl import pyplot, save


def plot_esd(singular_values: np.ndarray, metrics, path: str | Path, title: str = "") -> Path:
    """Draw the eigenvalue (sigma^2) histogram of one matrix with its fitted tail and MP edge."""
    plt = pyplot()
    sv = np.asarray(singular_values, dtype=np.float64)
    sv = sv[np.isfinite(sv) & (sv > 0)]
    # sigma^2 leaves float64's range beyond ~1e154 (or below ~1e-154): draw sigma^2 / sigma_max^2 then
    unit = 1.0
    if sv.size and not (sv.min() > 1e-150 and sv.max() < 1e150):
        unit = float(sv.max())
    with np.errstate(under="ignore"):
        lam = (sv / unit) ** 2
    lam = lam[lam > 0]
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    if lam.size:
        lo, hi = lam.min(), lam.max()
        bins = np.geomspace(lo, hi * 1.0001, max(10, min(80, lam.size // 4 + 1))) if hi > lo else 10
        ax.hist(lam, bins=bins, density=True, color="#4c72b0", alpha=0.75, label="ESD")
        alpha, xmin, n_tail = (getattr(metrics, k, None) for k in ("alpha", "xmin", "n_tail"))
        xmin = None if xmin is None or unit != 1.0 else xmin
        if alpha is not None and xmin and n_tail:
            x = np.geomspace(xmin, hi, 50)
            # continuous power law above xmin, scaled to the tail's share of all eigenvalues
            pdf = (n_tail / lam.size) * (alpha - 1) / xmin * (x / xmin) ** (-alpha)
            ax.plot(x, pdf, color="#c44e52", lw=2, label=f"power law alpha={alpha:.2f} (n_tail={n_tail})")
            ax.axvline(xmin, color="#c44e52", ls=":", lw=1)
        edge = getattr(metrics, "mp_bulk_edge", None)
        if edge:
            ax.axvline((edge / unit) ** 2, color="#55a868", ls="--", lw=1.5, label="MP bulk edge")
        ax.set_xscale("log")
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no nonzero singular value", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("eigenvalue of W^T W (sigma^2)" if unit == 1.0 else "sigma^2 / sigma_max^2")
    ax.set_ylabel("density")
    ax.set_title(title or getattr(metrics, "name", ""), fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower left")
    return save(fig, path)


def plot_all_esds(report, folder: str | Path) -> list[Path]:
    """One ESD PNG per analysed matrix of a :class:`hessian_spectra.weights.results.WeightsReport`."""
    folder = Path(folder)
    paths = []
    for m in report.matrices:
        if m.metrics is None or m.singular_values is None:
            continue
        fname = re.sub(r"[^A-Za-z0-9_.-]+", "_", m.name).strip("_") + ".png"
        paths.append(plot_esd(m.singular_values, m.metrics, folder / fname, title=m.name))
    return paths
