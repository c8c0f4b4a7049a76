"""`spectra weights`: run the weight-spectrum probe and write JSON/CSV/figures atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from hessian_spectra.cli.console import out_console, progress_bar, safe
from hessian_spectra.errors import InputError

FORMATS = {"json", "csv"}
#: The terminal table's columns (glossary keys).
TABLE_COLUMNS = ("matrix", "shape", "sigma_max", "stable_rank", "condition_number", "modified_condition_number",
                 "alpha", "n_tail", "mp_n_spikes", "status")  # fmt: skip


def run_weights(
    *,
    path: str | None,
    out: Path,
    formats: str,
    plots: bool,
    layers: tuple[str, ...],
    topk: int | None,
    dtype: str,
    threads: int | None,
    seed: int,
    example: bool,
    quiet: bool,
    table_rows: int,
    device: str = "auto",
    entry: str | None = None,
    optimizer_state: bool = False,
) -> None:
    """Validate arguments, analyse, then write every requested output in one atomic step."""
    from hessian_spectra.analyses.report.inputs import (
        finish_inputs,
        folder_files,
        generated_input,
        hash_files,
    )
    from hessian_spectra.io import atomic_write_json, atomic_write_text, check_output_dir, staged_directory
    from hessian_spectra.weights.plan import WeightsSettings
    from hessian_spectra.weights.probe import analyze_weights
    from hessian_spectra.weights.results import report_csv

    wanted = {f.strip().lower() for f in formats.split(",") if f.strip()}
    if not wanted or wanted - FORMATS:
        raise InputError(
            "--format", f"unknown format(s) {sorted(wanted - FORMATS) or formats!r}; use json,csv"
        )
    if dtype not in ("float64", "float32"):
        raise InputError("--dtype", f"must be float64 or float32, got {dtype!r}")
    if topk is not None and topk < 1:
        raise InputError("--topk", f"must be >= 1, got {topk}")
    if threads is not None and threads < 1:
        raise InputError("--threads", f"must be >= 1, got {threads}")
    if example == (path is not None):
        raise InputError(None, "give exactly one of PATH or --example")
    from hessian_spectra.parallel.devices import resolve_device

    dev = resolve_device(device, "--device")  # torch-free when the machine has no NVIDIA driver
    check_output_dir(out)  # a bad --out fails now, not after the analysis

    settings = WeightsSettings(layers=layers, topk=topk, dtype=dtype, threads=threads, seed=seed, entry=entry,
                               optimizer_state=optimizer_state)  # fmt: skip
    written: list[str] = []
    with staged_directory(out) as stage:
        if example:  # written where it is kept, and recorded as the tool's own input, not as a temp path
            from hessian_spectra.checkpoints.examples import write_example_checkpoint

            source = write_example_checkpoint(stage / "example-checkpoint", seed=seed)
            written.append("example-checkpoint/")
        else:
            source = Path(path)
        hashes = None  # hashed in a background thread while the spectra are computed (cost in hash_seconds)
        if source.is_dir():
            hashes = hash_files(folder_files(source), source)
        elif source.is_file():
            hashes = hash_files(_files_read(source), source.parent)
        with progress_bar("weights", quiet=quiet) as update:
            report = analyze_weights(source, settings, progress=update, device=dev)
        if not report.matrices:
            raise InputError(report.source, "no weight matrices to analyse (every tensor was skipped)")
        if example:
            report = _kept_at(report, stage, out)
            inputs = generated_input("built-in example checkpoint", by="spectra weights --example", seed=seed,
                                     path="example-checkpoint")  # fmt: skip
            inputs["hashes"] = hashes
        else:
            inputs = {"kind": "checkpoint", "path": str(source.resolve()), "hashes": hashes}
        doc = report.to_dict()
        doc["inputs"] = finish_inputs(inputs)  # joins the hashing thread (before any plotting process forks)
        if "json" in wanted:
            atomic_write_json(stage / "weights.json", doc)
            written.append("weights.json")
        if "csv" in wanted:
            atomic_write_text(stage / "weights.csv", report_csv(report))
            written.append("weights.csv")
        if plots:
            from hessian_spectra.figures.depth import plot_metrics_vs_depth
            from hessian_spectra.figures.esd import plot_all_esds

            esd_files = plot_all_esds(report, stage / "esd")
            plot_metrics_vs_depth(report, stage / "depth.png")
            written.append(f"esd/ ({len(esd_files)} PNGs)")
            written.append("depth.png")
    if not quiet:
        _print_table(report, table_rows)
        out_console().print(f"wrote {', '.join(written)} to {safe(out)}")


def _files_read(path: Path) -> list[Path]:
    """The files a checkpoint path stands for: itself, plus the shards a ``*.index.json`` lists."""
    files = [path]
    if path.name.endswith(".index.json"):
        import json

        try:
            shards = sorted(set(json.loads(path.read_text()).get("weight_map", {}).values()))
        except (OSError, ValueError, AttributeError):
            shards = []  # the reader reports a broken index with its own message
        files += [path.parent / s for s in shards if (path.parent / s).is_file() and "/" not in s]
    return files


def _kept_at(report, stage: Path, out: Path):
    """``report`` with paths inside the staging folder rewritten to where they are kept (``out``)."""
    from dataclasses import replace

    def moved(p: str) -> str:
        return str(out / Path(p).relative_to(stage)) if Path(p).is_relative_to(stage) else p

    return replace(
        report, source=moved(report.source), files=tuple(replace(f, path=moved(f.path)) for f in report.files)
    )


def _print_table(report, max_rows: int) -> None:
    """A readable table of the main metrics, plus the robust model summary."""
    from hessian_spectra.analyses.glossary.core import term
    from hessian_spectra.analyses.report.numbers import fmt
    from rich.table import Table

    table = Table(title=f"weight spectra: {safe(report.source)}", show_lines=False)
    for key in TABLE_COLUMNS:  # every column is a glossary entry (README, report.md)
        table.add_column(term(key).label, overflow="fold")
    rows = report.matrices
    shown = rows if len(rows) <= max_rows else rows[:max_rows]
    for m in shown:
        x = m.metrics
        if x is None:
            table.add_row(safe(m.name), f"{m.shape[0]}x{m.shape[1]}", *["-"] * (len(TABLE_COLUMNS) - 3), m.status)
            continue
        table.add_row(
            safe(m.name), f"{m.shape[0]}x{m.shape[1]}", fmt(x.sigma_max), fmt(x.stable_rank), fmt(x.condition_number),
            fmt(x.modified_condition_number), fmt(x.alpha, 3), fmt(x.n_tail), fmt(x.mp_n_spikes), m.status,
        )  # fmt: skip
    console = out_console()
    console.print(table)
    if len(rows) > max_rows:
        console.print(
            f"... {len(rows) - max_rows} more rows in the JSON/CSV output (--table-rows to show more)"
        )
    skipped = [r for r in report.inventory if r.status == "skipped"]
    console.print(
        f"{len(report.matrices)} matrices from {len(report.inventory) - len(skipped)} tensors; "
        f"{len(skipped)} tensors skipped (reasons in the JSON inventory)"
    )
    summary = report.summary.metrics
    parts = []
    for key, label in (
        ("alpha", "alpha"),
        ("stable_rank", "stable rank"),
        ("log_spectral_norm", "log10 sigma_max^2"),
    ):
        s = summary.get(key)
        if s is not None and s.median is not None:
            outl = (
                f", outliers: {safe(', '.join(s.outliers[:3]))}{' ...' if len(s.outliers) > 3 else ''}"
                if s.outliers
                else ""
            )
            parts.append(f"median {label} {fmt(s.median)} (mean {fmt(s.mean)}{outl})")
    mck = summary.get("modified_condition_number")
    if mck is not None and mck.geometric_mean is not None:
        parts.append(f"GMCN (geometric mean of modified kappa) {fmt(mck.geometric_mean)}")
    for line in parts:
        console.print(line)
    nonfinite = [m.name for m in report.matrices if m.status == "nonfinite"]
    if nonfinite:
        console.print(
            f"[bold red]NaN/Inf weights[/] in {len(nonfinite)} matrices: {safe(', '.join(nonfinite[:5]))}"
        )


def register(app: typer.Typer) -> None:
    """Add ``spectra weights`` to the app."""
    app.command(name="weights")(weights)


def weights(
    path: Annotated[
        str | None,
        typer.Argument(
            help="Checkpoint: .safetensors, sharded index, HF folder, .bin/.pt/.ckpt (weights found at any depth), .gguf."
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("spectra-out/weights"),
    format: Annotated[str, typer.Option("--format", help="Comma-separated: json,csv.")] = "json,csv",
    plots: Annotated[
        bool, typer.Option("--plots/--no-plots", help="Also write ESD and depth figures (PNG).")
    ] = False,
    layers: Annotated[
        list[str] | None, typer.Option("--layers", help="Glob on tensor names; repeat for several.")
    ] = None,
    topk: Annotated[
        int | None, typer.Option("--topk", help="Only the top/bottom-K singular values (huge matrices).")
    ] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="float64 (exact) or float32.")] = "float64",
    threads: Annotated[int | None, typer.Option("--threads", help="Torch threads for the SVDs.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for randomized partial spectra.")] = 0,
    example: Annotated[
        bool, typer.Option("--example", help="Write a small built-in checkpoint into OUT and analyse it.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or table.")] = False,
    table_rows: Annotated[int, typer.Option("--table-rows", help="Rows of the terminal table.")] = 40,
    device: Annotated[
        str,
        typer.Option(
            "--device",
            help="auto (a CUDA GPU when torch sees one, else CPU), cpu (numpy; torch-free on safetensors), "
            "cuda or cuda:N (batched torch decompositions on that GPU).",
        ),
    ] = "auto",
    entry: Annotated[
        str | None,
        typer.Option(
            "--entry",
            help="Nested entry of a torch checkpoint to read (e.g. ema, model_state); default: found.",
        ),
    ] = None,
    optimizer_state: Annotated[
        bool,
        typer.Option(
            "--optimizer-state",
            help="Also report Adam's second moments per parameter (diagonal-curvature proxy).",
        ),
    ] = False,
) -> None:
    """Singular-value spectra and metrics of every weight matrix (ranks, condition numbers, alpha, MP)."""
    run_weights(
        path=path, out=out, formats=format, plots=plots, layers=tuple(layers or ()), topk=topk, dtype=dtype,
        threads=threads, seed=seed, example=example, quiet=quiet, table_rows=table_rows, device=device,
        entry=entry, optimizer_state=optimizer_state,
    )  # fmt: skip
