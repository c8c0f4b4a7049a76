"""The figures of ``spectra track`` as PNG bytes keyed by file stem: each weight and update metric against
step per layer group (worst tensors named), and the Hessian series when the Hessian probe ran."""

from __future__ import annotations

from typing import Any

from hessian_spectra.analyses.track.summary import (
    UPDATE_METRICS,
    WEIGHT_METRICS,
    metric_series,
    worst_tensors,
)

__all__ = ["track_figures", "CAPTIONS"]

CAPTIONS = {
    "weights_sigma_max": "Largest singular value of each weight matrix against step.",
    "weights_stable_rank": "Stable rank ||W||_F^2 / ||W||_2^2 of each weight matrix against step.",
    "weights_alpha": "WeightWatcher power-law alpha of each weight matrix against step.",
    "weights_modified_condition_number": "Modified condition number sigma_1 / mean(bottom 10% of sigma).",
    "updates_per_step_sigma_max": "||W_t+1 - W_t||_2 / steps: spectral change of the weights per optimizer step.",
    "updates_stable_rank": "Stable rank of the update dW between consecutive checkpoints.",
    "updates_update_ratio": "Update-to-weight spectral ratio ||dW||_2 / ||W_t||_2 over each interval.",
    "updates_normalized_sigma_max": "u = spectral norm of the lr-weighted mean update direction (optimizer "
    "units; see the clip rule), with the measured clip threshold c per group (dashed).",
    "hessian_full": "Full-model Hessian lambda_max and lambda_min (Lanczos) and trace (SLQ) against step.",
    "hessian_blocks": "Per-block Hessian lambda_max against step (block SLQ); worst blocks named.",
    "hessian_heterogeneity": "Mean pairwise JS distance between block spectral densities, per convention.",
}


def track_figures(result: Any, worst: int = 3) -> dict[str, bytes]:
    """Figure stem -> PNG bytes (metrics with no finite value anywhere are left out)."""
    from hessian_spectra.figures.track import lines_figure, metric_by_group_figure

    figs: dict[str, bytes] = {}
    clip_c = {
        g.group: g.c for g in result.clip.groups if result.clip.details.get(g.group, {}).get("n_with_lr")
    }
    for source, metrics in (("weights", WEIGHT_METRICS), ("updates", UPDATE_METRICS)):
        for key, log in metrics.items():
            data = metric_series(result, key, source)
            if not data:
                continue
            picks = {g: worst_tensors(s, worst) for g, s in data.items()}
            figs[f"{source}_{key}"] = metric_by_group_figure(
                data, key, log=log, worst=picks, hlines=clip_c if key == "normalized_sigma_max" else None,
                xlabel="step" if source == "weights" else "step (end of interval)",
                title=f"{source}: {key} over training",
            )  # fmt: skip
    if result.hessian:
        figs.update(_hessian_figures(result.hessian, worst, lines_figure, metric_by_group_figure))
    return figs


def _hessian_figures(
    hess: list[dict[str, Any]], worst: int, lines_figure, metric_by_group_figure
) -> dict[str, bytes]:
    figs: dict[str, bytes] = {}
    xs = [(i if h["step"] is None else h["step"]) for i, h in enumerate(hess)]

    def pts(key: str) -> list[tuple[float, float]]:
        return [(x, float(h[key])) for x, h in zip(xs, hess, strict=True) if h.get(key) is not None]

    full = [("eigenvalue", {"lambda_max": pts("lambda_max"), "lambda_min": pts("lambda_min")}, False),
            ("trace (SLQ)", {"trace": pts("trace")}, False)]  # fmt: skip
    if any(p for _, lines, _ in full for p in lines.values()):
        figs["hessian_full"] = lines_figure(full, title="Hessian over training")
    blocks: dict[str, list[tuple[float, float]]] = {}
    for x, h in zip(xs, hess, strict=True):
        for b in h.get("blocks") or []:
            if b.get("lambda_max") is not None:
                blocks.setdefault(b["name"], []).append((x, float(b["lambda_max"])))
    if blocks:
        positive = {k: v for k, v in blocks.items() if all(y > 0 for _, y in v)}
        figs["hessian_blocks"] = metric_by_group_figure(
            {"blocks": blocks}, "block lambda_max", log=len(positive) == len(blocks),
            worst={"blocks": worst_tensors(blocks, worst)}, title="Hessian blocks over training",
        )  # fmt: skip
    js: dict[str, list[tuple[float, float]]] = {}
    for x, h in zip(xs, hess, strict=True):
        for conv, v in ((h.get("heterogeneity") or {}).get("mean_js") or {}).items():
            if v is not None:
                js.setdefault(conv, []).append((x, float(v)))
    if js:
        figs["hessian_heterogeneity"] = lines_figure(
            [("mean JS distance", js, False)], title="Block heterogeneity"
        )
    return figs
