"""`spectra analyze`: the whole report (weights, Hessian, heterogeneity, head structure, recommendations)
in one folder: report.json, report.md and a self-contained report.html."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.console import err_console, out_console, progress_bar
from spectra.errors import InputError


def run_analysis(model, batches, loss, settings, options, *, source: str, weights_source=None, quiet: bool,
                 label: str = "analyze", extra=None):  # fmt: skip
    """Run :func:`analyses.report.analyze_model` with the cost estimate printed first and progress bars."""
    from analyses.report import analyze_model

    def announce(cost) -> None:
        if not quiet:
            err_console().print(f"[bold]{label}[/]: cost estimate {cost.describe()}")

    with progress_bar(f"{label} hessian", quiet=quiet, unit="HVPs") as update:
        return analyze_model(
            model, batches, loss, settings, source=source, options=options, weights_source=weights_source,
            progress=update, on_estimate=announce, extra=extra,
        )  # fmt: skip


def run_analyze_cmd(*, factory: str | None, weights: str | None, model_dir: str | None, data: str | None,
                    task: str | None, batch_size: int, seq_len: int, batches: int, out: Path, settings, options,
                    quiet: bool) -> dict:  # fmt: skip
    """Load the workload (factory or HF directory), analyse, write the report folder atomically."""
    from analyses.report import write_report

    settings.validate()
    if (factory is None) == (model_dir is None):
        raise InputError(
            "MODEL", "give either a Hugging Face model directory or --model-factory module:function"
        )
    if factory is not None:
        from analyses.data import load_factory

        work = load_factory(factory, weights)
        weights_source = None  # the live module (with the loaded weights)
    else:
        from analyses.data import load_hf_workload

        if data is None:
            raise InputError("--data", "a text or JSONL file is required with a model directory")
        work = load_hf_workload(model_dir, data, task=task, batch_size=batch_size, seq_len=seq_len,
                                max_batches=batches)  # fmt: skip
        weights_source = model_dir
    work_batches = work.batches[:batches] if batches else work.batches
    doc, figures = run_analysis(work.model, work_batches, work.loss, settings, options, source=work.source,
                                weights_source=weights_source, quiet=quiet)  # fmt: skip
    write_report(out, doc, figures)
    if not quiet:
        console = out_console()
        for line in doc["findings"]:
            console.print(line)
        console.print(f"wrote report.json, report.md, report.html to {out}")
    return doc


def register(app: typer.Typer) -> None:
    """Add ``spectra analyze`` to the app."""
    app.command(name="analyze")(analyze)


def analyze(
    model_dir: Annotated[
        str | None, typer.Argument(help="Hugging Face model directory (config, weights, tokenizer).")
    ] = None,
    data: Annotated[
        str | None, typer.Option("--data", help="Text or JSONL file (with a model directory).")
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            "--task", help="causal-lm, masked-lm or sequence-classification (default: from config)."
        ),
    ] = None,
    model_factory: Annotated[
        str | None, typer.Option("--model-factory", help="module:function returning (model, loss, batches).")
    ] = None,
    weights: Annotated[
        str | None, typer.Option("--weights", help="Weights to load into the factory model.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("spectra-out/report"),
    batches: Annotated[
        int, typer.Option("--batches", help="Batches the Hessian is averaged over (0: all).")
    ] = 4,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Sequences per batch (model directory).")
    ] = 8,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per sequence (model directory).")] = 128,
    top_k: Annotated[int, typer.Option("--top-k", help="Extreme eigenvalues per side (Lanczos).")] = 5,
    probes: Annotated[int, typer.Option("--probes", help="SLQ probes (full model).")] = 10,
    steps: Annotated[int, typer.Option("--steps", help="Lanczos steps per SLQ probe (full model).")] = 50,
    block_probes: Annotated[int, typer.Option("--block-probes", help="SLQ probes per block.")] = 10,
    block_steps: Annotated[int, typer.Option("--block-steps", help="Lanczos steps per block probe.")] = 50,
    blocks: Annotated[str, typer.Option("--blocks", help="tensor or head.")] = "tensor",
    heads: Annotated[
        int | None, typer.Option("--heads", help="Attention heads (default: from the model).")
    ] = None,
    structure_columns: Annotated[
        int, typer.Option("--structure-columns", help="Exact Hessian columns per tensor in the head check.")
    ] = 1024,
    no_structure: Annotated[
        bool, typer.Option("--no-structure", help="Skip the per-head structure check.")
    ] = False,
    no_weights: Annotated[bool, typer.Option("--no-weights", help="Skip the weight spectra.")] = False,
    optimizer: Annotated[str, typer.Option("--optimizer", help="adamw or muon (recommendations).")] = "adamw",
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="float32 or float64 (default: model's).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every random probe.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summary.")] = False,
) -> None:
    """The full report: Hessian spectra, block heterogeneity, head structure, weight spectra, recommendations."""
    from analyses.report import AnalyzeOptions
    from spectra.hessian_probe import HessianSettings

    if optimizer.lower() not in ("adamw", "muon"):
        raise InputError("--optimizer", f"must be adamw or muon, got {optimizer!r}")
    if batches < 0:
        raise InputError("--batches", f"must be >= 0, got {batches}")
    settings = HessianSettings(
        top_k=top_k, probes=probes, steps=steps, block_probes=block_probes, block_steps=block_steps, blocks=blocks,
        n_heads=heads, dtype=dtype, seed=seed,
    )  # fmt: skip
    options = AnalyzeOptions(
        weights=not no_weights, structure=not no_structure, structure_max_columns=structure_columns,
        recommendations=not no_weights, optimizer=optimizer.lower(), n_heads=heads,
    )  # fmt: skip
    run_analyze_cmd(factory=model_factory, weights=weights, model_dir=model_dir, data=data, task=task,
                    batch_size=batch_size, seq_len=seq_len, batches=batches, out=out, settings=settings,
                    options=options, quiet=quiet)  # fmt: skip
