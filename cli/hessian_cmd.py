"""`spectra hessian`: the Hessian part of the report alone (full-model Lanczos + SLQ, block SLQ,
heterogeneity) in the `spectra analyze` format: report.json (kind "hessian"; weights, structure and
recommendations null), report.md and report.html with the Hessian figures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from hessian_spectra.cli import options as o
from hessian_spectra.cli.analyze_cmd import run_analyze_cmd


def register(app: typer.Typer) -> None:
    """Add ``spectra hessian`` to the app."""
    app.command(name="hessian")(hessian)


def hessian(
    model_dir: o.ModelDir = None,
    data: o.Data = None,
    task: o.Task = None,
    model_factory: o.ModelFactory = None,
    weights: o.Weights = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("spectra-out/hessian"),
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
    seed: o.Seed = 0,
    exact: o.Exact = True,
    confidence: o.Confidence = 0.95,
    time_limit: o.TimeLimit = None,
    budget: o.Budget = None,
    max_memory: o.MaxMemory = None,
    device: o.Device = "auto",
    device_map: o.DeviceMap = None,
    allow_missing: o.AllowMissing = False,
    quiet: o.Quiet = False,
    resume: o.Resume = False,
) -> None:
    """Hessian spectra alone: top/bottom eigenvalues, density and trace, block spectra and heterogeneity."""
    from hessian_spectra.analyses.report.analyze import AnalyzeOptions

    settings = o.hessian_settings(
        batches=batches, top_k=top_k, probes=probes, steps=steps, block_probes=block_probes, block_steps=block_steps,
        blocks=blocks, max_blocks_per_tensor=max_blocks_per_tensor, heads=heads, dtype=dtype, seed=seed, exact=exact,
        confidence=confidence, time_limit=time_limit, budget=budget, max_memory=max_memory,
    )  # fmt: skip
    dev, dmap = o.resolve_placement(device, device_map)
    options = AnalyzeOptions(weights=False, structure=False, recommendations=False, n_heads=heads)
    run_analyze_cmd(factory=model_factory, weights=weights, model_dir=model_dir, data=data, task=task,
                    batch_size=batch_size, seq_len=seq_len, batches=batches, out=out, settings=settings,
                    options=options, quiet=quiet, kind="hessian", device=dev, device_map=dmap,
                    allow_missing=allow_missing, resume=resume)  # fmt: skip
