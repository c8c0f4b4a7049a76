"""Which block groups (Q/K, V, attention output, MLP, embeddings, norms, ...) drive the heterogeneity:
each group left out in turn and the statistic recomputed, so a group ranks by how much the number moves
without it, not by how many blocks it has."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from hessian_spectra.analyses.heterogeneity.blocks import BlockSpectrum
from hessian_spectra.analyses.heterogeneity.js import mean_offdiagonal
from hessian_spectra.analyses.heterogeneity.scales import ScaleStatistic, block_scales

__all__ = ["statistic_drivers", "group_drivers"]


def statistic_drivers(
    spectra: Sequence[BlockSpectrum], statistic: ScaleStatistic, reference: float
) -> list[dict[str, Any]]:
    """Per block group: blocks, parameters (and their share), the group's median log10 scale below the
    largest block scale, the statistic without the group and ``effect`` = statistic - statistic without
    it (positive: the group widens the spread). Sorted by effect, largest first; a group that holds every
    block has no "without" and effect None."""
    scales = np.log10(block_scales(spectra, statistic.scale))
    weights = statistic.weights(spectra)
    top = float(scales.max()) if scales.size else 0.0
    total = sum(s.dim for s in spectra)
    rows = []
    for g in sorted({s.group for s in spectra}):
        inside = np.array([s.group == g for s in spectra])
        rest = ~inside
        without = statistic.value(scales[rest], weights[rest]) if rest.sum() >= 2 else None
        params = int(sum(s.dim for s, i in zip(spectra, inside, strict=True) if i))
        rows.append(
            {
                "group": g, "num_blocks": int(inside.sum()), "parameters": params,
                "parameter_share": params / total if total else None,
                "median_decades_below_max": float(np.median(top - scales[inside])),
                "statistic_without": without,
                "effect": None if without is None else reference - without,
            }
        )  # fmt: skip
    rows.sort(key=lambda r: -(r["effect"] if r["effect"] is not None else -math.inf))
    return rows


def group_drivers(spectra: Sequence[BlockSpectrum], js: np.ndarray) -> list[dict[str, Any]]:
    """Per block group under one JS convention: mean JS of pairs inside the group, of pairs with one block
    in it, and how much the model's mean JS drops when the group is removed (``contribution``)."""
    n = len(spectra)
    overall = mean_offdiagonal(js)
    rows = []
    for g in sorted({s.group for s in spectra}):
        inside = [i for i, s in enumerate(spectra) if s.group == g]
        outside = [i for i in range(n) if i not in inside]
        cross = js[np.ix_(inside, outside)] if inside and outside else np.zeros((0,))
        without = mean_offdiagonal(js, outside)
        rows.append(
            {
                "group": g, "num_blocks": len(inside), "mean_js_within": mean_offdiagonal(js, inside),
                "mean_js_to_others": float(cross.mean()) if cross.size else None,
                "mean_js_without_group": without,
                "contribution": None if overall is None or without is None else overall - without,
            }
        )  # fmt: skip
    rows.sort(key=lambda r: -(r["contribution"] if r["contribution"] is not None else -math.inf))
    return rows
