"""Per-matrix empirical spectral density (ESD): log-log histogram of the eigenvalues of W^T W, the fitted
power-law tail (only when a tail was fitted on enough eigenvalues) and the Marchenko-Pastur edge.

Fast by construction (issue #15: 31 PNGs took 52 s): one canvas is reused for every matrix, ticks are few
and plain (no mathtext, no minor ticks), the layout is fixed (no tight-bbox pass), and many matrices are
split over worker processes. Fewer than MIN_DENSITY eigenvalues are drawn as a rug of lines, not a
histogram."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from hessian_spectra.figures._mpl import log_ticks, pyplot, shorten

__all__ = ["MIN_TAIL_DRAWN", "MIN_DENSITY", "EsdCanvas", "plot_esd", "plot_all_esds", "esd_filename"]

#: A power law is drawn only over a tail of at least this many eigenvalues (smaller "fits" are the
#: whole-sample fallback of the estimator, not a tail).
MIN_TAIL_DRAWN = 8
#: Below this many positive eigenvalues the ESD is a rug (one line per eigenvalue), not a histogram.
MIN_DENSITY = 16
#: Worker processes are used from this many figures on (and never more than the CPUs).
PARALLEL_FROM = 12


class EsdCanvas:
    """One figure and axes reused for every ESD (creating a figure costs more than drawing one)."""

    def __init__(self) -> None:
        plt = pyplot()
        self.fig, self.ax = plt.subplots(figsize=(6.4, 3.6))
        self.fig.subplots_adjust(left=0.13, right=0.66, bottom=0.14, top=0.9)

    def draw(self, singular_values: np.ndarray, metrics, title: str = "") -> None:
        """Draw one matrix's ESD on the (cleared) canvas."""
        ax = self.ax
        ax.clear()
        sv = np.asarray(singular_values, dtype=np.float64)
        sv = sv[np.isfinite(sv) & (sv > 0)]
        # sigma^2 leaves float64's range beyond ~1e154 (or below ~1e-154): draw sigma^2 / sigma_max^2 then
        unit = float(sv.max()) if sv.size and not (sv.min() > 1e-150 and sv.max() < 1e150) else 1.0
        with np.errstate(under="ignore"):
            lam = (sv / unit) ** 2
        lam = np.sort(lam[lam > 0])
        notes: list[str] = []
        if lam.size >= MIN_DENSITY and lam[-1] > lam[0]:
            lo, hi = float(lam[0]), float(lam[-1])
            bins = np.geomspace(lo, hi * 1.0001, max(10, min(60, lam.size // 4 + 1)))
            hist, _ = np.histogram(lam, bins=bins, density=True)
            ax.stairs(
                hist, bins, fill=True, color="#4c72b0", alpha=0.75, label=f"ESD ({lam.size} eigenvalues)"
            )
            ymin, ymax = float(hist[hist > 0].min()), float(hist.max())
            if unit == 1.0:
                self._tail(lam, metrics, ymin, notes)
            else:
                notes.append("power law not drawn: axis rescaled by sigma_max^2")
            ax.set_yscale("log")
            ax.set_ylim(ymin / 2, ymax * 2)
            log_ticks(ax.yaxis, ymin / 2, ymax * 2)
            ax.set_ylabel("density")
        elif lam.size:
            lo, hi = float(lam[0]), float(lam[-1])
            ax.vlines(lam, 0, 1, color="#4c72b0", lw=1.5, label=f"{lam.size} eigenvalue(s)")
            ax.set_ylim(0, 1.1)
            ax.set_yticks([])
            notes.append(f"{lam.size} eigenvalue(s): too few for a density")
            if getattr(metrics, "alpha", None) is not None:
                notes.append("no power law drawn (no tail to fit)")
        else:
            lo = hi = 1.0
            notes.append("no positive eigenvalue (zero matrix)")
        edge = getattr(metrics, "mp_bulk_edge", None)
        if edge and lam.size:
            e2 = (edge / unit) ** 2
            ax.axvline(e2, color="#55a868", ls="--", lw=1.5, label="MP bulk edge")
            lo, hi = min(lo, e2), max(hi, e2)
        lo, hi = (lo / 1.5, hi * 1.5) if hi > lo else (lo / 10, hi * 10)
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        log_ticks(ax.xaxis, lo, hi)
        ax.set_xlabel("eigenvalue of W^T W (sigma^2)" if unit == 1.0 else "sigma^2 / sigma_max^2")
        ax.set_title(shorten(title or getattr(metrics, "name", ""), 70), fontsize=9, y=1.01)
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ax.legend(
                handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False
            )
        if notes:
            import textwrap

            ax.text(1.02, 0.0, "\n".join(textwrap.fill(n, 30) for n in notes), transform=ax.transAxes, fontsize=7, va="bottom", ha="left",
                    color="#555")  # fmt: skip

    def _tail(self, lam: np.ndarray, metrics, ymin: float, notes: list[str]) -> None:
        alpha, xmin, n_tail = (getattr(metrics, k, None) for k in ("alpha", "xmin", "n_tail"))
        if alpha is None or not xmin or not n_tail:
            notes.append("no power-law fit")
            return
        if n_tail < MIN_TAIL_DRAWN:
            notes.append(f"power law not drawn: tail of {n_tail} < {MIN_TAIL_DRAWN} eigenvalues")
            return
        x = np.geomspace(xmin, float(lam[-1]), 50)
        pdf = (n_tail / lam.size) * (alpha - 1) / xmin * (x / xmin) ** (-alpha)  # the tail's share of all
        keep = pdf >= ymin / 2
        self.ax.plot(
            x[keep], pdf[keep], color="#c44e52", lw=2, label=f"power law alpha={alpha:.2f}\n(n_tail={n_tail})"
        )
        self.ax.axvline(xmin, color="#c44e52", ls=":", lw=1)

    def png(self, dpi: int = 90) -> bytes:
        from hessian_spectra.figures._png import png_bytes

        return png_bytes(self.fig, dpi=dpi, close=False)

    def close(self) -> None:
        pyplot().close(self.fig)


def plot_esd(singular_values: np.ndarray, metrics, path: str | Path, title: str = "") -> Path:
    """Draw one matrix's ESD into ``path`` (PNG, written atomically)."""
    from hessian_spectra.io import atomic_write_bytes

    canvas = EsdCanvas()
    try:
        canvas.draw(singular_values, metrics, title)
        atomic_write_bytes(path, canvas.png())
    finally:
        canvas.close()
    return Path(path)


def esd_filename(name: str) -> str:
    """The PNG file name of a matrix (characters outside [A-Za-z0-9_.-] replaced)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") + ".png"


def _draw_chunk(jobs: Sequence[tuple[np.ndarray, object, str, str]]) -> list[str]:
    from hessian_spectra.io import atomic_write_bytes

    canvas = EsdCanvas()
    try:
        for sv, metrics, title, path in jobs:
            canvas.draw(sv, metrics, title)
            atomic_write_bytes(path, canvas.png())
    finally:
        canvas.close()
    return [p for *_, p in jobs]


def plot_all_esds(report, folder: str | Path, workers: int | None = None) -> list[Path]:
    """One ESD PNG per analysed matrix of a :class:`hessian_spectra.weights.results.WeightsReport`.
    ``workers``: processes to draw with (default: the CPUs, from PARALLEL_FROM figures on; 1 = here)."""
    folder = Path(folder)
    jobs = [(m.singular_values, m.metrics, m.name, str(folder / esd_filename(m.name)))
            for m in report.matrices if m.metrics is not None and m.singular_values is not None]  # fmt: skip
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if len(jobs) >= PARALLEL_FROM else 1
    workers = max(1, min(workers, len(jobs)))
    if workers == 1 or not _can_fork():
        return [Path(p) for p in _draw_chunk(jobs)]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    size = math.ceil(len(jobs) / workers)
    chunks = [jobs[i : i + size] for i in range(0, len(jobs), size)]
    with ProcessPoolExecutor(len(chunks), mp_context=multiprocessing.get_context("fork")) as pool:
        done = [p for chunk in pool.map(_draw_chunk, chunks) for p in chunk]
    return [Path(p) for p in done]


def _can_fork() -> bool:
    """Fork only from a single-threaded process on a platform that has fork (a fork while another thread
    holds a lock can deadlock the child)."""
    import threading

    return hasattr(os, "fork") and threading.active_count() == 1
