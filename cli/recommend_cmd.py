"""`spectra recommend`: PC-layer and spectral-clipping recommendations from the weight spectra."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from hessian_spectra.cli.console import out_console, progress_bar, safe
from hessian_spectra.errors import InputError


def load_hessian_blocks(path: Path) -> dict[str, dict[str, float]]:
    """Block curvature from a ``spectra hessian``/``analyze`` JSON, or a plain {name: {lambda_max, trace}}."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except (OSError, ValueError) as exc:
        raise InputError(path, f"not a readable JSON file ({exc})") from None
    blocks = doc.get("hessian", doc).get("blocks") if isinstance(doc, dict) else None
    out: dict[str, dict[str, float]] = {}
    if isinstance(blocks, list):
        for b in blocks:
            if isinstance(b, dict) and "name" in b:
                out[str(b["name"])] = {k: b.get(k) for k in ("lambda_max", "trace") if b.get(k) is not None}
    elif isinstance(doc, dict):
        out = {k: v for k, v in doc.items() if isinstance(v, dict) and "lambda_max" in v}
    if not out:
        raise InputError(path, "no block lambda_max/trace found (expected a hessian report or {name: {...}})")
    return out


def run_recommend(
    *,
    path: str,
    out: Path,
    optimizer: str,
    lr: float | None,
    weight_decay: float | None,
    include_qkv: bool,
    hessian: Path | None,
    seed: int,
    quiet: bool,
    track: Path | None = None,
) -> dict[str, Any]:
    """Weights probe -> recommendations; write recommendations.json + recommendations.md atomically."""
    from hessian_spectra.analyses.advice.inputs import inputs_from_weights_report
    from hessian_spectra.analyses.advice.markdown import render_markdown
    from hessian_spectra.analyses.advice.recommendations import recommend
    from hessian_spectra.io import atomic_write_json, atomic_write_text, check_output_dir, staged_directory
    from hessian_spectra.weights.plan import WeightsSettings
    from hessian_spectra.weights.probe import analyze_weights
    from hessian_spectra.weights.provenance import provenance

    if optimizer.lower() not in ("adamw", "muon"):
        raise InputError("--optimizer", f"must be adamw or muon, got {optimizer!r}")
    for label, val in (("--lr", lr), ("--weight-decay", weight_decay)):
        if val is not None and (not math.isfinite(val) or val < 0):
            raise InputError(label, f"must be a non-negative number, got {val}")
    blocks = load_hessian_blocks(hessian) if hessian is not None else None
    measured = None
    if track is not None:
        from hessian_spectra.analyses.advice.clip_series import read_track_thresholds

        measured = read_track_thresholds(track)
    check_output_dir(out)
    settings = WeightsSettings(seed=seed)
    with progress_bar("weights", quiet=quiet) as update:
        report = analyze_weights(Path(path), settings, progress=update)
    items = inputs_from_weights_report(report)
    if not items:
        raise InputError(report.source, "no weight matrix with a full spectrum to base recommendations on")
    n_params = sum(math.prod(r.shape) for r in report.inventory)
    recs = recommend(
        items, optimizer=optimizer.lower(), lr=lr, weight_decay=weight_decay, hessian=blocks,
        include_qkv=include_qkv, n_params=n_params, seed=seed, clip_thresholds=measured,
    )  # fmt: skip
    doc = recs.to_dict()
    doc["source"] = report.source
    doc["provenance"] = provenance(seed)
    skipped = [f"{m.name} ({m.status})" for m in report.matrices if m.status != "ok"]
    if skipped:
        doc.setdefault("notes", []).append(
            f"{len(skipped)} matrices without a full nonzero finite spectrum (status partial, zero or nonfinite) "
            f"were not assessed: {', '.join(skipped[:10])}"
        )
    markdown = render_markdown(doc, title=f"Recommendations for {Path(report.source).name}")
    with staged_directory(out) as stage:
        atomic_write_json(stage / "recommendations.json", doc)
        atomic_write_text(stage / "recommendations.md", markdown)
    if not quiet:
        from hessian_spectra.analyses.report.numbers import fmt

        summary = recs.summary
        console = out_console()
        for key, value in summary.items():
            if not isinstance(value, dict | list):
                console.print(safe(f"{key}: {fmt(value)}"))
        console.print(f"wrote recommendations.json, recommendations.md to {safe(out)}")
    return doc


def register(app: typer.Typer) -> None:
    """Add ``spectra recommend`` to the app."""
    app.command(name="recommend")(recommend_command)


def recommend_command(
    path: Annotated[str, typer.Argument(help="Checkpoint (same forms as `spectra weights`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("spectra-out/recommend"),
    optimizer: Annotated[str, typer.Option("--optimizer", help="adamw or muon.")] = "adamw",
    lr: Annotated[float | None, typer.Option("--lr", help="Learning rate you train with.")] = None,
    weight_decay: Annotated[
        float | None, typer.Option("--weight-decay", help="Weight decay you train with.")
    ] = None,
    include_qkv: Annotated[bool, typer.Option("--include-qkv", help="Also assess Q/K/V for PC.")] = False,
    hessian: Annotated[
        Path | None,
        typer.Option("--hessian", help="report.json of `spectra hessian`/`analyze`: rank by curvature."),
    ] = None,
    track: Annotated[
        Path | None,
        typer.Option("--track", help="track.json of `spectra track`: clip thresholds measured from updates."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """PC-layer (polynomial preconditioning) and spectral-clipping recommendations per weight matrix."""
    run_recommend(
        path=path, out=out, optimizer=optimizer, lr=lr, weight_decay=weight_decay, include_qkv=include_qkv,
        hessian=hessian, seed=seed, quiet=quiet, track=track,
    )  # fmt: skip
