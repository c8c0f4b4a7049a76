"""Typer option declarations shared by `spectra analyze` and `spectra hessian` (one source of help text),
and the option checks that run before any work."""

from __future__ import annotations

from typing import Annotated

import typer
from hessian_spectra.errors import InputError

BLOCKS_HELP = "Hessian blocks: tensor, head (Q/K/V per head), layer (all tensors of a layer) or adam-mini."
MAX_BLOCKS_HELP = "With --blocks adam-mini: evenly spaced blocks kept per tensor (0: every block)."
DEFAULT_MAX_BLOCKS = 64
DEVICE_HELP = (
    "auto (a CUDA GPU when torch sees one, else CPU), cpu, cuda or cuda:N: where the model and HVPs run."
)
DEVICE_MAP_HELP = (
    "auto: spread a Hugging Face model over every visible GPU (model-parallel HVPs, needs accelerate); "
    "for models larger than one GPU."
)

ModelDir = Annotated[
    str | None, typer.Argument(help="Hugging Face model directory (config, weights, tokenizer).")
]
Data = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="With a model directory: a text or JSONL file (JSONL 'text'/'label'; sentence pairs as JSONL "
        "'anchor'/'positive' or adjacent lines), or a folder of class sub-folders of images.",
    ),
]
Task = Annotated[
    str | None,
    typer.Option(
        "--task",
        help="causal-lm, masked-lm, sequence-classification, image-classification or embedding (in-batch "
        "contrastive loss of a sentence encoder). Default: from the config's head; embedding without one.",
    ),
]
AllowMissing = Annotated[
    bool,
    typer.Option(
        "--allow-missing",
        help="Analyse a model folder whose weights lack tensors its config needs (they are freshly "
        "initialised and listed in the report) instead of refusing it.",
    ),
]
ModelFactory = Annotated[
    str | None, typer.Option("--model-factory", help="module:function returning (model, loss, batches).")
]
Weights = Annotated[str | None, typer.Option("--weights", help="Weights to load into the factory model.")]
Batches = Annotated[int, typer.Option("--batches", help="Batches the Hessian is averaged over (0: all).")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Sequences per batch (model directory).")]
SeqLen = Annotated[int, typer.Option("--seq-len", help="Tokens per sequence (model directory).")]
TopK = Annotated[int, typer.Option("--top-k", help="Extreme eigenvalues per side (Lanczos).")]
Probes = Annotated[int, typer.Option("--probes", help="SLQ probes (full model).")]
Steps = Annotated[int, typer.Option("--steps", help="Lanczos steps per SLQ probe (full model).")]
BlockProbes = Annotated[int, typer.Option("--block-probes", help="SLQ probes per block.")]
BlockSteps = Annotated[int, typer.Option("--block-steps", help="Lanczos steps per block probe.")]
Blocks = Annotated[str, typer.Option("--blocks", help=BLOCKS_HELP)]
MaxBlocks = Annotated[int, typer.Option("--max-blocks-per-tensor", help=MAX_BLOCKS_HELP)]
Heads = Annotated[int | None, typer.Option("--heads", help="Attention heads (default: from the model).")]
Dtype = Annotated[str | None, typer.Option("--dtype", help="float32 or float64 (default: model's).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of every random probe.")]
Confidence = Annotated[
    float,
    typer.Option("--confidence", help="Level of every interval in the report (traces, spectral masses)."),
]
Device = Annotated[str, typer.Option("--device", help=DEVICE_HELP)]
DeviceMap = Annotated[str | None, typer.Option("--device-map", help=DEVICE_MAP_HELP)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summary.")]
Resume = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue an interrupted run into the same --out: finished Hessian phases are loaded from "
        "OUT/.spectra-resume instead of recomputed (same settings and inputs required).",
    ),
]
EXACT_HELP = (
    "Exact spectra where cheaper: blocks of <= block-probes x block-steps parameters and models of <= probes x "
    "steps parameters from their Hessian columns (--no-exact: estimate everything)."
)
Exact = Annotated[bool, typer.Option("--exact/--no-exact", help=EXACT_HELP)]
TimeLimit = Annotated[
    str | None,
    typer.Option(
        "--time-limit",
        help="Wall-time budget (90s, 10m, 1h): unit costs are measured first, then probes, steps and (big "
        "models) an even subset of blocks per group are chosen to fit; refused if even the smallest plan cannot.",
    ),
]
Budget = Annotated[
    str | None,
    typer.Option("--budget", help="quick, standard or thorough: probe/step counts (explicit flags win)."),
]
MaxMemory = Annotated[
    str | None,
    typer.Option(
        "--max-memory", help="Peak memory budget of the run (4GiB, 512MiB): fewer Lanczos steps to fit."
    ),
]


def max_blocks(value: int) -> int | None:
    """--max-blocks-per-tensor: 0 means every block (None); negative is refused."""
    if value < 0:
        raise InputError("--max-blocks-per-tensor", f"must be >= 0 (0: every block), got {value}")
    return value or None


def hessian_settings(
    *, batches: int, top_k: int, probes: int, steps: int, block_probes: int, block_steps: int, blocks: str,
    max_blocks_per_tensor: int, heads: int | None, dtype: str | None, seed: int, exact: bool = True,
    confidence: float = 0.95, time_limit: str | None = None, budget: str | None = None,
    max_memory: str | None = None,
):  # fmt: skip
    """The HessianSettings of a command line (checked: InputError naming the bad flag); the CLI always
    plans (measures unit costs and prints the plan before the work)."""
    from hessian_spectra.curvature.budget import parse_bytes, parse_duration
    from hessian_spectra.curvature.probe import HessianSettings

    if batches < 0:
        raise InputError("--batches", f"must be >= 0, got {batches}")
    return HessianSettings(
        top_k=top_k, probes=probes, steps=steps, block_probes=block_probes, block_steps=block_steps, blocks=blocks,
        n_heads=heads, dtype=dtype, seed=seed, max_blocks_per_tensor=max_blocks(max_blocks_per_tensor), exact=exact,
        confidence=confidence, time_limit=None if time_limit is None else parse_duration(time_limit),
        max_memory=None if max_memory is None else parse_bytes(max_memory), budget=budget, plan=True,
    )  # fmt: skip


def resolve_placement(device: str, device_map: str | None) -> tuple[str | None, str | None]:
    """``(device, device_map)`` from --device/--device-map, checked before any work (InputError naming
    the flag): a device string such as ``"cuda:0"`` and no map, or no device and the map."""
    from hessian_spectra.parallel.devices import parse_device, resolve_device

    if device_map is None:
        return resolve_device(device, "--device"), None
    from hessian_spectra.analyses.workloads import DEVICE_MAPS

    if device_map not in DEVICE_MAPS:
        raise InputError("--device-map", f"unknown device map {device_map!r}: use {' or '.join(DEVICE_MAPS)}")
    if parse_device(device, "--device")[0] != "auto":
        raise InputError(
            "--device-map", f"chooses the devices itself; leave --device at auto (got {device!r})"
        )
    return None, device_map
