"""The series summary: per layer group, each metric's median over matrices at every checkpoint (or
interval), the tensors that stand out, and the findings printed and put first in track.html."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "WEIGHT_METRICS",
    "UPDATE_METRICS",
    "metric_series",
    "worst_tensors",
    "summarize_track",
    "findings",
]

#: Weight metrics followed over checkpoints (keys of MatrixMetrics), with whether to plot on a log axis.
WEIGHT_METRICS: dict[str, bool] = {
    "sigma_max": True,
    "stable_rank": False,
    "alpha": False,
    "modified_condition_number": True,
}
#: Update metrics followed over intervals: ||dW||_2 per step, stable rank of dW, ||dW||_2 / ||W||_2, and
#: the clip rule's u (spectral norm of the mean update direction, optimizer units).
UPDATE_METRICS: dict[str, bool] = {
    "per_step_sigma_max": True,
    "stable_rank": False,
    "update_ratio": True,
    "normalized_sigma_max": True,
}


def update_value(interval: dict[str, Any], m: dict[str, Any], key: str) -> float | None:
    """An update metric of matrix ``m`` in ``interval`` (derived ones computed here)."""
    if key == "per_step_sigma_max":
        steps = interval.get("steps")
        return m["sigma_max"] / steps if m.get("sigma_max") is not None and steps else None
    if key == "normalized_sigma_max":
        sig = m["decayed_sigma_max"] if m.get("decayed_sigma_max") is not None else m.get("sigma_max")
        lr_sum = interval.get("lr_sum")
        return sig / lr_sum if sig is not None and lr_sum else None
    return m.get(key)


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def metric_series(result: Any, key: str, source: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """group -> matrix name -> [(x, value)] for a weight metric (x = step) or an update metric (x = the
    interval's end step). Steps unknown (``--order given``) use the checkpoint index."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    if source == "weights":
        for i, ck in enumerate(result.checkpoints):
            x = ck["step"] if ck["step"] is not None else i
            for m in ck["matrices"]:
                v = m["metrics"].get(key)
                if _finite(v):
                    out.setdefault(m["group"], {}).setdefault(m["name"], []).append((x, float(v)))
    else:
        for i, iv in enumerate(result.updates):
            x = iv["to_step"] if iv["to_step"] is not None else i + 1
            group_of = {m["name"]: m["group"] for m in result.checkpoints[i + 1]["matrices"]}
            for m in iv["matrices"]:
                v = update_value(iv, m, key)
                if _finite(v):
                    g = group_of.get(m["name"], "other")
                    out.setdefault(g, {}).setdefault(m["name"], []).append((x, float(v)))
    return out


def worst_tensors(series: dict[str, list[tuple[int, float]]], n: int = 3, by: str = "max") -> list[str]:
    """Names with the largest max value (``by="max"``) or the largest |log change| first -> last."""

    def score(pts: list[tuple[int, float]]) -> float:
        vals = [v for _, v in pts]
        if by == "max":
            return max(vals)
        a, b = vals[0], vals[-1]
        return abs(math.log(b / a)) if a > 0 and b > 0 else abs(b - a)

    ranked = sorted(series, key=lambda k: -score(series[k]))
    return ranked[:n]


def _median_at(series: dict[str, list[tuple[int, float]]], which: int) -> float | None:
    vals = [pts[which][1] for pts in series.values() if pts]
    return float(np.median(vals)) if vals else None


def summarize_track(result: Any) -> dict[str, Any]:
    """Per metric and group: median at the first and last point, and the worst tensors."""
    out: dict[str, Any] = {"weights": {}, "updates": {}}
    for source, metrics in (("weights", WEIGHT_METRICS), ("updates", UPDATE_METRICS)):
        for key in metrics:
            per_group = {}
            for g, series in sorted(metric_series(result, key, source).items()):
                per_group[g] = {
                    "first_median": _median_at(series, 0), "last_median": _median_at(series, -1),
                    "worst_by_max": worst_tensors(series, by="max"), "most_changed": worst_tensors(series, by="change"),
                    "n_matrices": len(series),
                }  # fmt: skip
            out[source][key] = per_group
    steps = [c["step"] for c in result.checkpoints]
    out["checkpoints"] = len(result.checkpoints)
    out["steps"] = steps
    out["matrices"] = len(result.checkpoints[-1]["matrices"]) if result.checkpoints else 0
    return out


def _interval_label(iv: dict[str, Any], i: int) -> str:
    if iv["from_step"] is None or iv["to_step"] is None:
        return f"checkpoints {i + 1} -> {i + 2}"
    return f"steps {iv['from_step']} -> {iv['to_step']}"


def _top_update(result: Any, key: str) -> tuple[str, str, float] | None:
    best = None
    for i, iv in enumerate(result.updates):
        for m in iv["matrices"]:
            v = update_value(iv, m, key)
            if _finite(v) and (best is None or v > best[2]):
                best = (m["name"], _interval_label(iv, i), float(v))
    return best


def findings(result: Any, summary: dict[str, Any]) -> list[str]:
    """Plain sentences, most important first; each number with what it is."""
    steps = [s for s in summary["steps"] if s is not None]
    span = f"steps {steps[0]}-{steps[-1]}" if steps else "steps unknown (--order given)"
    lines = [f"{summary['checkpoints']} checkpoints ({span}), {summary['matrices']} matrices each."]
    top = _top_update(result, "update_ratio")
    if top is not None:
        lines.append(
            f"Largest update-to-weight spectral ratio ||dW||_2/||W||_2: {top[2]:.3g} at `{top[0]}` ({top[1]})."
        )
    for g in result.clip.groups:
        lines.append(f"Spectral clipping, {g.group}: c = {g.c:.3g} ({g.reason}).")
    sr = summary["weights"].get("stable_rank", {})
    for g, s in sr.items():
        if s["first_median"] is not None and s["last_median"] is not None:
            lines.append(
                f"Weight stable rank, {g}: median {s['first_median']:.3g} -> {s['last_median']:.3g}; most "
                f"changed: {', '.join(f'`{n}`' for n in s['most_changed'][:2])}."
            )
    if result.hessian:
        first, last = result.hessian[0], result.hessian[-1]
        if first.get("lambda_max") is not None and last.get("lambda_max") is not None:
            lines.append(
                f"Hessian lambda_max: {first['lambda_max']:.4g} at step {first['step']} -> "
                f"{last['lambda_max']:.4g} at step {last['step']}."
            )
        het = last.get("heterogeneity")
        if het:
            lines.append(f"Block heterogeneity at the last checkpoint: {het['verdict']}.")
    return lines
