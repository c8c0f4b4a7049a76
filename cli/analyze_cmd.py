"""`spectra analyze`: the whole report (weights, Hessian, heterogeneity, head structure, recommendations)
in one folder: report.json, report.md and a self-contained report.html."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.console import err_console, out_console, progress_bar
from spectra.errors import InputError


def run_analysis(model, batches, loss, settings, options, *, source: str, weights_source=None, quiet: bool,
                 label: str = "analyze", extra=None, kind: str = "analyze"):  # fmt: skip
    """Run :func:`analyses.report.analyze_model` with the cost estimate printed first and progress bars."""
    from analyses.report import analyze_model

    def announce(cost) -> None:
        if not quiet:
            err_console().print(f"[bold]{label}[/]: cost estimate {cost.describe()}")

    with progress_bar(f"{label} hessian", quiet=quiet, unit="HVPs") as update:
        return analyze_model(
            model, batches, loss, settings, source=source, options=options, weights_source=weights_source,
            progress=update, on_estimate=announce, extra=extra, kind=kind,
        )  # fmt: skip


def run_analyze_cmd(*, factory: str | None, weights: str | None, model_dir: str | None, data: str | None,
                    task: str | None, batch_size: int, seq_len: int, batches: int, out: Path, settings, options,
                    quiet: bool, kind: str = "analyze", device: str | None = None,
                    device_map: str | None = None) -> dict:  # fmt: skip
    """Load the workload (factory or HF directory), analyse, write the report folder atomically.
    ``kind="hessian"`` (with every non-Hessian option off) is `spectra hessian`."""
    from analyses.report import write_report

    settings.validate()
    if (factory is None) == (model_dir is None):
        raise InputError(
            "MODEL", "give either a Hugging Face model directory or --model-factory module:function"
        )
    if factory is not None:
        from analyses.data import load_factory

        if device_map is not None:
            raise InputError(
                "--device-map", "needs a Hugging Face model directory (a factory places its own model)"
            )
        work = load_factory(factory, weights, device=device)
        weights_source = None  # the live module (with the loaded weights)
    else:
        from analyses.data import load_hf_workload

        if data is None:
            raise InputError("--data", "a text or JSONL file is required with a model directory")
        work = load_hf_workload(model_dir, data, task=task, batch_size=batch_size, seq_len=seq_len,
                                max_batches=batches, device=device, device_map=device_map,
                                dtype=settings.dtype)  # fmt: skip
        weights_source = model_dir
    work_batches = work.batches[:batches] if batches else work.batches
    doc, figures = run_analysis(work.model, work_batches, work.loss, settings, options, source=work.source,
                                weights_source=weights_source, quiet=quiet, label=kind, kind=kind,
                                extra={"placement": work.placement})  # fmt: skip
    write_report(out, doc, figures)
    if not quiet:
        console = out_console()
        for line in doc["findings"]:
            console.print(line)
        console.print(f"wrote report.json, report.md, report.html to {out}")
    return doc


BLOCKS_HELP = "Hessian blocks: tensor, head (Q/K/V per head), layer (all tensors of a layer) or adam-mini."
MAX_BLOCKS_HELP = "With --blocks adam-mini: evenly spaced blocks kept per tensor (0: every block)."
DEFAULT_MAX_BLOCKS = 64


def max_blocks(value: int) -> int | None:
    """--max-blocks-per-tensor: 0 means every block (None); negative is refused."""
    if value < 0:
        raise InputError("--max-blocks-per-tensor", f"must be >= 0 (0: every block), got {value}")
    return value or None


DEVICE_HELP = (
    "auto (a CUDA GPU when torch sees one, else CPU), cpu, cuda or cuda:N: where the model and HVPs run."
)
DEVICE_MAP_HELP = (
    "auto: spread a Hugging Face model over every visible GPU (model-parallel HVPs, needs accelerate); "
    "for models larger than one GPU."
)


def resolve_placement(device: str, device_map: str | None) -> tuple[str | None, str | None]:
    """``(device, device_map)`` from --device/--device-map, checked before any work (InputError naming
    the flag): a device string such as ``"cuda:0"`` and no map, or no device and the map."""
    from spectra.devices import parse_device, resolve_device

    if device_map is None:
        return resolve_device(device, "--device"), None
    from analyses.data import DEVICE_MAPS

    if device_map not in DEVICE_MAPS:
        raise InputError("--device-map", f"unknown device map {device_map!r}: use {' or '.join(DEVICE_MAPS)}")
    if parse_device(device, "--device")[0] != "auto":
        raise InputError(
            "--device-map", f"chooses the devices itself; leave --device at auto (got {device!r})"
        )
    return None, device_map


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
    blocks: Annotated[str, typer.Option("--blocks", help=BLOCKS_HELP)] = "tensor",
    max_blocks_per_tensor: Annotated[
        int, typer.Option("--max-blocks-per-tensor", help=MAX_BLOCKS_HELP)
    ] = DEFAULT_MAX_BLOCKS,
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
    device: Annotated[str, typer.Option("--device", help=DEVICE_HELP)] = "auto",
    device_map: Annotated[str | None, typer.Option("--device-map", help=DEVICE_MAP_HELP)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summary.")] = False,
) -> None:
    """The full report: Hessian spectra, block heterogeneity, head structure, weight spectra, recommendations."""
    from analyses.report import AnalyzeOptions
    from spectra.hessian_probe import HessianSettings

    if optimizer.lower() not in ("adamw", "muon"):
        raise InputError("--optimizer", f"must be adamw or muon, got {optimizer!r}")
    if batches < 0:
        raise InputError("--batches", f"must be >= 0, got {batches}")
    dev, device_map = resolve_placement(device, device_map)
    settings = HessianSettings(
        top_k=top_k, probes=probes, steps=steps, block_probes=block_probes, block_steps=block_steps, blocks=blocks,
        n_heads=heads, dtype=dtype, seed=seed, max_blocks_per_tensor=max_blocks(max_blocks_per_tensor),
    )  # fmt: skip
    options = AnalyzeOptions(
        weights=not no_weights, structure=not no_structure, structure_max_columns=structure_columns,
        recommendations=not no_weights, optimizer=optimizer.lower(), n_heads=heads, weights_device=dev,
    )  # fmt: skip
    run_analyze_cmd(factory=model_factory, weights=weights, model_dir=model_dir, data=data, task=task,
                    batch_size=batch_size, seq_len=seq_len, batches=batches, out=out, settings=settings,
                    options=options, quiet=quiet, device=dev, device_map=device_map)  # fmt: skip
