"""`spectra hessian`: the Hessian part of the report alone (full-model Lanczos + SLQ, block SLQ,
heterogeneity) in the `spectra analyze` format: report.json (kind "hessian"; weights, structure and
recommendations null), report.md and report.html with the Hessian figures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.analyze_cmd import (
    BLOCKS_HELP,
    DEFAULT_MAX_BLOCKS,
    DEVICE_HELP,
    DEVICE_MAP_HELP,
    MAX_BLOCKS_HELP,
    max_blocks,
    resolve_placement,
    run_analyze_cmd,
)
from spectra.errors import InputError


def register(app: typer.Typer) -> None:
    """Add ``spectra hessian`` to the app."""
    app.command(name="hessian")(hessian)


def hessian(
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
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("spectra-out/hessian"),
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
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="float32 or float64 (default: model's).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every random probe.")] = 0,
    device: Annotated[str, typer.Option("--device", help=DEVICE_HELP)] = "auto",
    device_map: Annotated[str | None, typer.Option("--device-map", help=DEVICE_MAP_HELP)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
) -> None:
    """Hessian spectra alone: top/bottom eigenvalues, density and trace, block spectra and heterogeneity."""
    from analyses.report import AnalyzeOptions
    from spectra.hessian_probe import HessianSettings

    if batches < 0:
        raise InputError("--batches", f"must be >= 0, got {batches}")
    dev, dmap = resolve_placement(device, device_map)
    settings = HessianSettings(
        top_k=top_k, probes=probes, steps=steps, block_probes=block_probes, block_steps=block_steps, blocks=blocks,
        n_heads=heads, dtype=dtype, seed=seed, max_blocks_per_tensor=max_blocks(max_blocks_per_tensor),
    )  # fmt: skip
    options = AnalyzeOptions(weights=False, structure=False, recommendations=False, n_heads=heads)
    run_analyze_cmd(factory=model_factory, weights=weights, model_dir=model_dir, data=data, task=task,
                    batch_size=batch_size, seq_len=seq_len, batches=batches, out=out, settings=settings,
                    options=options, quiet=quiet, kind="hessian", device=dev, device_map=dmap)  # fmt: skip
