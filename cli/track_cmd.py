"""`spectra track PATH...`: spectra over training. Weight metrics of every checkpoint, update spectra of
every consecutive pair, the clip threshold they imply, optionally the Hessian of every checkpoint ->
track.json, track.csv, figures/*.png and a self-contained track.html, written as one set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from hessian_spectra.cli import options as o
from hessian_spectra.cli.console import err_console, out_console, progress_bar, safe
from hessian_spectra.errors import InputError

TRACK_FILES = ("track.json", "track.csv", "track.html")


def register(app: typer.Typer) -> None:
    """Add ``spectra track`` to the app."""
    app.command(name="track")(track)


def run_track(*, paths: list[str], out: Path, order: str, layers: tuple[str, ...], lr: float | None,
              weight_decay: float | None, clip_quantile: float, keep_values: int, threads: int | None, seed: int,
              hessian_spec=None, quiet: bool) -> dict:  # fmt: skip
    """Discover the series, check every option, run, then write all outputs in one staged step."""
    from hessian_spectra.analyses.track.document import build_track_document, track_csv
    from hessian_spectra.analyses.track.html_page import render_track_html
    from hessian_spectra.analyses.track.plots import track_figures
    from hessian_spectra.analyses.track.run import TrackSettings, track_series
    from hessian_spectra.checkpoints.series import discover_series
    from hessian_spectra.io import (
        atomic_write_bytes,
        atomic_write_json,
        atomic_write_text,
        check_output_dir,
        staged_directory,
    )
    from hessian_spectra.weights.plan import WeightsSettings
    from hessian_spectra.weights.provenance import provenance

    if threads is not None and threads < 1:
        raise InputError("--threads", f"must be >= 1, got {threads}")
    settings = TrackSettings(
        weights=WeightsSettings(layers=layers, threads=threads, seed=seed), lr=lr, weight_decay=weight_decay,
        clip_quantile=clip_quantile, keep_values=keep_values or None,
    )  # fmt: skip
    settings.validate()
    check_output_dir(out)
    series = discover_series(paths, order=order)
    probe = None
    if hessian_spec is not None:
        from hessian_spectra.analyses.track.hessian import make_hessian_probe

        announced = []

        def announce(cost) -> None:
            if not quiet and not announced:
                announced.append(cost)
                err_console().print(
                    f"[bold]track[/]: Hessian per checkpoint, cost estimate {cost.describe()}"
                )

        probe = make_hessian_probe(hessian_spec, on_estimate=announce)
    with progress_bar("track", quiet=quiet, unit="steps") as update:
        result = track_series(series, settings, hessian=probe, progress=update)
    prov = provenance(seed, {"command": "track", "analysis_seconds": round(result.seconds, 3)})
    doc = build_track_document(
        result, provenance=prov,
        hessian_settings=None if hessian_spec is None else {
            **hessian_spec.settings.to_dict(), "model_factory": hessian_spec.factory, "data": hessian_spec.data,
            "task": hessian_spec.task, "batch_size": hessian_spec.batch_size, "seq_len": hessian_spec.seq_len,
            "batches": hessian_spec.batches,
        },
    )  # fmt: skip
    figures = track_figures(result)
    with staged_directory(out) as stage:
        atomic_write_json(stage / "track.json", doc)
        atomic_write_text(stage / "track.csv", track_csv(result))
        for key, png in figures.items():
            atomic_write_bytes(stage / "figures" / f"{key}.png", png)
        atomic_write_text(stage / "track.html", render_track_html(doc, figures))
    if not quiet:
        console = out_console()
        for line in doc["findings"]:
            console.print(safe(line))
        console.print(f"wrote {', '.join(TRACK_FILES)} and figures/ ({len(figures)} PNGs) to {safe(out)}")
    return doc


def track(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Checkpoints (files or folders), or ONE folder of checkpoint-N / step_N / step-N."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("spectra-out/track"),
    order: Annotated[
        str, typer.Option("--order", help="step (from names / trainer_state.json) or given (as typed).")
    ] = "step",
    layers: Annotated[
        list[str] | None, typer.Option("--layers", help="Glob on tensor names; repeat for several.")
    ] = None,
    lr: Annotated[
        float | None, typer.Option("--lr", help="Constant learning rate (default: trainer_state.json's log).")
    ] = None,
    weight_decay: Annotated[
        float | None, typer.Option("--weight-decay", help="Decoupled weight decay, removed from updates.")
    ] = None,
    clip_quantile: Annotated[
        float,
        typer.Option("--clip-quantile", help="Quantile of update norms that sets the clip threshold c."),
    ] = 0.9,
    keep_values: Annotated[
        int, typer.Option("--keep-values", help="Singular values of each update kept in track.json (0: all).")
    ] = 0,
    threads: Annotated[int | None, typer.Option("--threads", help="Threads for the decompositions.")] = None,
    model_factory: Annotated[
        str | None,
        typer.Option("--model-factory", help="module:function: Hessian of every checkpoint loaded into it."),
    ] = None,
    data: Annotated[
        str | None, typer.Option("--data", help="Text/JSONL file: Hessian of every checkpoint (HF folders).")
    ] = None,
    task: o.Task = None,
    batches: o.Batches = 4,
    batch_size: o.BatchSize = 8,
    seq_len: o.SeqLen = 128,
    top_k: o.TopK = 5,
    probes: o.Probes = 10,
    steps: o.Steps = 50,
    block_probes: o.BlockProbes = 10,
    block_steps: o.BlockSteps = 50,
    blocks: o.Blocks = "tensor",
    max_blocks_per_tensor: o.MaxBlocks = o.DEFAULT_MAX_BLOCKS,
    heads: o.Heads = None,
    dtype: o.Dtype = None,
    device: o.Device = "auto",
    seed: o.Seed = 0,
    quiet: o.Quiet = False,
) -> None:
    """Spectra over training: weight metrics per checkpoint, update spectra between checkpoints, the clip
    threshold they imply; with --model-factory or --data also the Hessian of every checkpoint."""
    spec = None
    if model_factory is not None or data is not None:
        from hessian_spectra.analyses.track.hessian import HessianSpec
        from hessian_spectra.parallel.devices import resolve_device

        settings = o.hessian_settings(
            batches=batches, top_k=top_k, probes=probes, steps=steps, block_probes=block_probes,
            block_steps=block_steps, blocks=blocks, max_blocks_per_tensor=max_blocks_per_tensor, heads=heads,
            dtype=dtype, seed=seed,
        )  # fmt: skip
        spec = HessianSpec(
            settings=settings, factory=model_factory, data=data, task=task, batch_size=batch_size, seq_len=seq_len,
            batches=batches, device=resolve_device(device, "--device"),
        )  # fmt: skip
        spec.validate()
    run_track(
        paths=paths, out=out, order=order, layers=tuple(layers or ()), lr=lr, weight_decay=weight_decay,
        clip_quantile=clip_quantile, keep_values=keep_values, threads=threads, seed=seed, hessian_spec=spec,
        quiet=quiet,
    )  # fmt: skip
