"""`spectra weights`: run the weight-spectrum probe and write JSON/CSV/figures atomically."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from hessian_spectra.cli.console import out_console, progress_bar
from hessian_spectra.errors import InputError

FORMATS = {"json", "csv"}


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
    from hessian_spectra.io import atomic_write_json, atomic_write_text, staged_directory
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

    settings = WeightsSettings(layers=layers, topk=topk, dtype=dtype, threads=threads, seed=seed, entry=entry,
                               optimizer_state=optimizer_state)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        if example:
            from hessian_spectra.checkpoints.examples import write_example_checkpoint

            source = write_example_checkpoint(Path(tmp) / "example-checkpoint", seed=seed)
        else:
            source = Path(path)
        with progress_bar("weights", quiet=quiet) as update:
            report = analyze_weights(source, settings, progress=update, device=dev)
        if not report.matrices:
            raise InputError(report.source, "no weight matrices to analyse (every tensor was skipped)")

        written: list[str] = []
        with staged_directory(out) as stage:
            if "json" in wanted:
                atomic_write_json(stage / "weights.json", report.to_dict())
                written.append("weights.json")
            if "csv" in wanted:
                atomic_write_text(stage / "weights.csv", report_csv(report))
                written.append("weights.csv")
            if example:
                import shutil

                shutil.copytree(source, stage / "example-checkpoint")
                written.append("example-checkpoint/")
            if plots:
                from hessian_spectra.figures.depth import plot_metrics_vs_depth
                from hessian_spectra.figures.esd import plot_all_esds

                esd_files = plot_all_esds(report, stage / "esd")
                plot_metrics_vs_depth(report, stage / "depth.png")
                written.append(f"esd/ ({len(esd_files)} PNGs)")
                written.append("depth.png")
    if not quiet:
        _print_table(report, table_rows)
        out_console().print(f"wrote {', '.join(written)} to {out}")


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}"


def _print_table(report, max_rows: int) -> None:
    """A readable table of the main metrics, plus the robust model summary."""
    from rich.table import Table

    table = Table(title=f"weight spectra: {report.source}", show_lines=False)
    for col in (
        "matrix",
        "shape",
        "sigma_max",
        "stable rank",
        "kappa",
        "mod kappa",
        "alpha (n_tail)",
        "MP spikes",
        "status",
    ):
        table.add_column(col, overflow="fold")
    rows = report.matrices
    shown = rows if len(rows) <= max_rows else rows[:max_rows]
    for m in shown:
        x = m.metrics
        if x is None:
            table.add_row(m.name, f"{m.shape[0]}x{m.shape[1]}", "-", "-", "-", "-", "-", "-", m.status)
            continue
        alpha = "-" if x.alpha is None else f"{x.alpha:.3g} ({x.n_tail})"
        table.add_row(
            m.name, f"{m.shape[0]}x{m.shape[1]}", _fmt(x.sigma_max), _fmt(x.stable_rank), _fmt(x.condition_number),
            _fmt(x.modified_condition_number), alpha, _fmt(x.mp_n_spikes), m.status,
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
                f", outliers: {', '.join(s.outliers[:3])}{' ...' if len(s.outliers) > 3 else ''}"
                if s.outliers
                else ""
            )
            parts.append(f"median {label} {s.median:.4g} (mean {_fmt(s.mean)}{outl})")
    mck = summary.get("modified_condition_number")
    if mck is not None and mck.geometric_mean is not None:
        parts.append(f"GMCN (geometric mean of modified kappa) {mck.geometric_mean:.4g}")
    for line in parts:
        console.print(line)
    nonfinite = [m.name for m in report.matrices if m.status == "nonfinite"]
    if nonfinite:
        console.print(
            f"[bold red]NaN/Inf weights[/] in {len(nonfinite)} matrices: {', '.join(nonfinite[:5])}"
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
    plots: Annotated[bool, typer.Option("--plots", help="Also write ESD and depth figures (PNG).")] = False,
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
