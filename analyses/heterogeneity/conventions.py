"""Named JS conventions: how block densities are built (axis, scale, kernel width, bins) before the
Jensen-Shannon distance is taken, so every JS number can be tagged with its convention.
Design notes: spectra/docs/heterogeneity.md."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "JSConvention",
    "SCALES_KEPT",
    "SCALES_KEPT_RELATIVE",
    "SHAPE_ONLY",
    "SCALES_KEPT_LOG",
    "PAPER",
    "PAPER_SCALED",
    "DEFAULT_CONVENTIONS",
    "DRIVERS_CONVENTION",
    "CONVENTIONS",
    "get_convention",
]


@dataclass(frozen=True)
class JSConvention:
    """How block densities are built before the JS distance is taken (see spectra/docs/heterogeneity.md).

    ``kernel`` sets the Gaussian kernel width: ``pooled`` = ``sigma_fraction`` x the span of the common
    grid (one width for all blocks, point-sampled on ``grid_points`` points); ``block`` = ``sigma_fraction``
    x each block's own eigenvalue range (one width per block); ``absolute`` = ``sigma_abs`` in the units
    of the axis. The ``block`` and ``absolute`` kernels are integrated exactly into bins (normal CDF) that
    are laid only where some block has mass (``window`` sigmas either side of every node).
    """

    name: str
    scale: Literal["common", "own", "model"]
    axis: Literal["linear", "symlog"]
    sigma_fraction: float | None = 0.01
    grid_points: int = 2048
    padding: float = 0.05
    log_floor: float = 1e-6
    sigma_abs: float | None = None
    padding_abs: float | None = None
    kernel: Literal["pooled", "block", "absolute"] = "pooled"
    window: float = 8.0
    bin_width: float = 0.5

    def __post_init__(self) -> None:
        if self.kernel not in ("pooled", "block", "absolute"):
            raise ValueError(f"convention {self.name!r}: kernel must be 'pooled', 'block' or 'absolute'")
        if (self.sigma_abs is not None) != (self.kernel == "absolute") or (self.sigma_fraction is None) != (
            self.kernel == "absolute"
        ):
            raise ValueError(
                f"convention {self.name!r}: kernel 'absolute' takes sigma_abs only, the others sigma_fraction only"
            )
        sigma = self.sigma_abs if self.sigma_abs is not None else self.sigma_fraction
        if not sigma > 0 or self.grid_points < 2 or not self.window >= 6.0 or not 0 < self.bin_width <= 1:
            raise ValueError(
                f"convention {self.name!r}: need sigma > 0, grid_points >= 2, window >= 6 and 0 < bin_width <= 1"
            )

    def describe(self) -> str:
        """One sentence naming the grid, kernel width, axis and the handling of negative eigenvalues."""
        scale = {
            "common": "one common grid for all blocks (curvature scales kept)",
            "own": "each block divided by its own spectral radius max|lambda| (shape only)",
            "model": (
                "one common grid for all blocks, every block divided by the model's curvature scale, the median block "
                "spectral radius (scales kept relative to each other; unchanged when the loss is multiplied by a constant)"
            ),
        }[self.scale]
        if self.axis == "linear":
            axis = "linear eigenvalue axis, negative eigenvalues kept in place"
        else:
            axis = (
                f"symlog axis x = sign(t) log10(1 + |t|/tau), tau = {self.log_floor:g} x the largest |eigenvalue|"
                " (negative eigenvalues mirrored, |t| < tau near 0)"
            )
        pad = (
            f"{self.padding_abs:g} (absolute)" if self.padding_abs is not None else f"{100 * self.padding:g}%"
        )
        tail = "JS distance = sqrt(JS divergence), log base 2, in [0, 1]"
        exact = (
            f"each bin's kernel mass integrated exactly with the normal CDF, bins laid only within "
            f"{self.window:g} sigma of some node, so densities sum to one"
        )
        if self.kernel == "pooled":
            merge = ", so blocks far below the largest merge into one spike" if self.scale == "common" else ""
            return (
                f"{scale}; {axis}; {self.grid_points}-point grid over the pooled range padded by {pad}; "
                f"Gaussian kernel sigma = {100 * self.sigma_fraction:g}% of the grid span (one width for all "
                f"blocks{merge}); {tail}"
            )
        if self.kernel == "block":
            return (
                f"{scale}; {axis}; per-block Gaussian kernel sigma_b = {100 * self.sigma_fraction:g}% of block "
                f"b's own eigenvalue range (at least {self.log_floor:g} x the largest |eigenvalue|), so every "
                f"block is resolved at its own scale and JS is unchanged when the loss is multiplied by a "
                f"constant; one common grid of bins of width <= {self.bin_width:g} sigma_b where block b has mass; "
                f"{exact}; {tail}"
            )
        units = (
            "in units of the model's curvature scale"
            if self.scale == "model"
            else "in eigenvalue units (JS changes when the loss is multiplied by a constant)"
        )
        return (
            f"{scale}; {axis}; lattice of {self.grid_points} points over the pooled range padded by {pad} on "
            f"each side, refined to step {self.bin_width:g} sigma when coarser; absolute Gaussian kernel sigma = "
            f"{self.sigma_abs:.4g} (sigma^2 = {self.sigma_abs**2:.3g}) {units}; {exact}; {tail}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "scale": self.scale, "axis": self.axis, "kernel": self.kernel,
            "sigma_fraction": self.sigma_fraction, "sigma_abs": self.sigma_abs, "grid_points": self.grid_points,
            "padding": self.padding, "padding_abs": self.padding_abs, "window": self.window, "bin_width": self.bin_width,
            "log_floor": self.log_floor, "description": self.describe(),
        }  # fmt: skip


#: Scales kept, each block smoothed at 1% of its own eigenvalue range (the default; see the design notes).
SCALES_KEPT = JSConvention("scales-kept", scale="common", axis="linear", kernel="block")
#: Scales kept, one kernel of 1% of the pooled span for all blocks (the earlier ``scales-kept``).
SCALES_KEPT_RELATIVE = JSConvention("scales-kept-relative", scale="common", axis="linear")
SHAPE_ONLY = JSConvention("shape-only", scale="own", axis="linear")
SCALES_KEPT_LOG = JSConvention("scales-kept-log", scale="common", axis="symlog")
#: The "Why Transformers Need Adam" convention: absolute sigma^2 = 1e-5, 50,000 points, +-1 padding.
PAPER = JSConvention(
    "paper", scale="common", axis="linear", kernel="absolute", sigma_fraction=None, sigma_abs=math.sqrt(1e-5),
    grid_points=50_000, padding_abs=1.0,
)  # fmt: skip
#: The paper's kernel made scale-free: eigenvalues divided by the median block spectral radius first.
PAPER_SCALED = JSConvention(
    "paper-scaled", scale="model", axis="linear", kernel="absolute", sigma_fraction=None,
    sigma_abs=math.sqrt(1e-5), grid_points=50_000, padding_abs=1.0,
)  # fmt: skip
#: ``scales-kept-log`` is left out of the defaults: its resolution near zero is finer than block SLQ gives
#: (0.20 off the exact JS at 24 probes x 64 steps on the tiny GPT), so it is only for exact spectra.
DEFAULT_CONVENTIONS: tuple[JSConvention, ...] = (SCALES_KEPT, SHAPE_ONLY)
#: The convention the group-drivers table of a report is read under.
DRIVERS_CONVENTION = "scales-kept"
#: Every named convention, by name.
CONVENTIONS: dict[str, JSConvention] = {
    c.name: c for c in (SCALES_KEPT, SHAPE_ONLY, SCALES_KEPT_LOG, SCALES_KEPT_RELATIVE, PAPER, PAPER_SCALED)
}


def get_convention(name: str | JSConvention) -> JSConvention:
    """The named convention (:data:`CONVENTIONS`); a :class:`JSConvention` is returned as is."""
    if isinstance(name, JSConvention):
        return name
    try:
        return CONVENTIONS[name]
    except KeyError:
        raise ValueError(f"unknown JS convention {name!r}; known: {', '.join(CONVENTIONS)}") from None
