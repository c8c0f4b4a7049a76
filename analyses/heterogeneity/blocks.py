"""Block spectra for the heterogeneity analysis: one discrete spectral measure per Hessian block, with the
block group and layer its name implies; built from exact eigenvalues, SLQ nodes or a Hessian report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from hessian_spectra.io import json_safe
from hessian_spectra.weights.roles import GROUPS, block_group  # named at the source; re-exported

__all__ = ["GROUPS", "BlockSpectrum", "block_group", "block_layer", "spectra_from_hessian"]


@dataclass(frozen=True, eq=False)
class BlockSpectrum:
    """The spectrum of one diagonal Hessian block as a discrete measure: ``nodes`` with ``weights``
    summing to one (exact: eigenvalues with weight 1/dim; SLQ: Ritz nodes with probe-averaged weights)."""

    name: str
    dim: int
    nodes: np.ndarray
    weights: np.ndarray
    source: Literal["exact", "slq"]
    lambda_max: float
    lambda_min: float
    trace: float
    trace_stderr: float | None = None
    group: str = "other"
    layer: int | None = None
    #: SLQ: the probe each node came from (for bootstrap over probes); None for exact spectra.
    probe_ids: np.ndarray | None = None

    @classmethod
    def exact(
        cls, name: str, eigenvalues: Any, *, group: str | None = None, layer: int | None = None
    ) -> BlockSpectrum:
        """From all eigenvalues of the block (an exact oracle, or a tiny block done densely)."""
        ev = np.sort(np.asarray(eigenvalues, dtype=np.float64).ravel())
        if ev.size == 0 or not np.all(np.isfinite(ev)):
            raise ValueError(f"block {name!r}: eigenvalues must be finite and non-empty")
        return cls(
            name=name, dim=int(ev.size), nodes=ev, weights=np.full(ev.size, 1.0 / ev.size), source="exact",
            lambda_max=float(ev[-1]), lambda_min=float(ev[0]), trace=float(ev.sum()), trace_stderr=0.0,
            group=group or block_group(name), layer=layer if layer is not None else block_layer(name),
        )  # fmt: skip

    @classmethod
    def from_slq(
        cls,
        name: str,
        dim: int,
        nodes: Any,
        weights: Any,
        *,
        trace: float | None = None,
        trace_stderr: float | None = None,
        lambda_max: float | None = None,
        lambda_min: float | None = None,
        group: str | None = None,
        layer: int | None = None,
    ) -> BlockSpectrum:
        """From SLQ nodes/weights of every probe (flattened together; weights renormalised to sum 1).

        ``nodes``/``weights`` of shape ``(probes, steps)`` (one row per probe, as SLQ returns them) keep
        the probe of every node in ``probe_ids``. ``lambda_max``/``lambda_min`` default to the extreme
        nodes (the extreme Ritz values, which converge first); ``trace`` defaults to dim x sum(w x node).
        """
        x = np.asarray(nodes, dtype=np.float64)
        w = np.asarray(weights, dtype=np.float64)
        if x.shape != w.shape or x.size == 0:
            raise ValueError(f"block {name!r}: nodes and weights must be non-empty and of equal size")
        ids = np.repeat(np.arange(x.shape[0]), x.shape[1]) if x.ndim == 2 else np.zeros(x.size, dtype=int)
        x, w = x.ravel(), w.ravel()
        keep = np.isfinite(x) & np.isfinite(w) & (w > 0)
        x, w, ids = x[keep], w[keep], ids[keep]
        if x.size == 0 or w.sum() <= 0:
            raise ValueError(f"block {name!r}: no finite SLQ node with positive weight")
        w = w / w.sum()
        order = np.argsort(x, kind="stable")
        x, w, ids = x[order], w[order], ids[order]
        return cls(
            name=name, dim=int(dim), nodes=x, weights=w, source="slq",
            lambda_max=float(x[-1] if lambda_max is None else lambda_max),
            lambda_min=float(x[0] if lambda_min is None else lambda_min),
            trace=float(dim * np.dot(w, x) if trace is None else trace), trace_stderr=trace_stderr,
            group=group or block_group(name), layer=layer if layer is not None else block_layer(name),
            probe_ids=ids,
        )  # fmt: skip

    @property
    def spectral_radius(self) -> float:
        """max |lambda| over the block (the shape-only convention divides by it)."""
        return float(max(abs(self.lambda_max), abs(self.lambda_min)))

    def to_dict(self) -> dict[str, Any]:
        """Summary without the nodes (those can be large); JSON-safe."""
        return json_safe(
            {
                "name": self.name, "dim": self.dim, "source": self.source, "group": self.group,
                "layer": self.layer, "lambda_max": self.lambda_max, "lambda_min": self.lambda_min,
                "trace": self.trace, "trace_stderr": self.trace_stderr, "num_nodes": int(self.nodes.size),
            }
        )  # fmt: skip


def block_layer(name: str) -> int | None:
    """The first integer component of a dotted block name (``h.3.attn.q`` -> 3), if any."""
    for part in name.replace("/", ".").replace("[", ".").split("."):
        if part.isdigit():
            return int(part)
    return None


def spectra_from_hessian(report: Any) -> list[BlockSpectrum]:
    """Block spectra from a :class:`hessian_spectra.curvature.probe.HessianReport` (or its ``to_dict()``):
    exact blocks (``method`` "exact") as exact spectra, the others from their SLQ nodes per probe."""
    rows = report["blocks"] if isinstance(report, dict) else report.to_dict()["blocks"]
    out = []
    for r in rows:
        if r.get("method") == "exact":
            out.append(BlockSpectrum.exact(r["name"], np.asarray(r["nodes"], dtype=np.float64).ravel()))
        else:
            out.append(
                BlockSpectrum.from_slq(
                    r["name"], r["dim"], np.asarray(r["nodes"], dtype=np.float64),
                    np.asarray(r["weights"], dtype=np.float64), trace=r["trace"], trace_stderr=r["trace_stderr"],
                    lambda_max=r["lambda_max"], lambda_min=r["lambda_min"],
                )
            )  # fmt: skip
    return out
