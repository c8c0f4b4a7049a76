"""`spectra partition`: export an Adam-mini block partition (optionally verified against the Hessian)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from hessian_spectra.cli import options as o
from hessian_spectra.cli.console import err_console, out_console, safe
from hessian_spectra.errors import InputError


def run_partition(
    *,
    model: str | None,
    out: Path,
    factory: str | None,
    weights: str | None,
    data: str | None,
    task: str | None,
    verify: bool,
    max_columns: int,
    seed: int,
    quiet: bool,
    allow_missing: bool = False,
) -> dict[str, Any]:
    """Partition a HF checkpoint folder or a ``--model-factory`` model; write partition.json atomically."""
    from hessian_spectra.analyses.partitions.build import partition_checkpoint, partition_model
    from hessian_spectra.io import atomic_write_json, check_output_file

    if (model is None) == (factory is None):
        raise InputError(
            None, "give exactly one of MODEL (a HF model folder) or --model-factory module:function"
        )
    if out.suffix.lower() != ".json":
        raise InputError(out, "--out must name a .json file")
    check_output_file(out)
    work = None
    if factory is not None:
        from hessian_spectra.analyses.workloads import load_factory

        work = load_factory(factory, weights)
        partition = partition_model(work.model)
        source = work.source
    else:
        path = Path(model)
        if not path.is_dir():
            raise InputError(path, "expected a HF model folder (config.json + weights)")
        partition = partition_checkpoint(path)
        source = str(path)
        if verify and data is not None:
            from hessian_spectra.analyses.workloads import load_hf_workload

            work = load_hf_workload(path, data, task=task, seed=seed, allow_missing=allow_missing)
    doc: dict[str, Any]
    if verify:
        if work is None:
            raise InputError(
                model, "--verify needs data: add --data FILE (text/JSONL), or use --model-factory"
            )
        from hessian_spectra.analyses.structure import verify_partition

        if not quiet:
            err_console().print("verifying block rules against the Hessian (exact columns where small) ...")
        report = verify_partition(
            work.model, work.batches, work.loss, partition, max_columns=max_columns, seed=seed
        )
        partition = report.partition
        doc = partition.to_dict()
        doc["verify"] = report.to_dict()
    else:
        doc = partition.to_dict()
    from hessian_spectra.weights.provenance import provenance

    doc["source"] = source
    doc["provenance"] = provenance(seed)
    atomic_write_json(out, doc)
    if not quiet:
        from hessian_spectra.analyses.report.numbers import fmt

        console = out_console()
        s = partition.summary
        for key in ("num_learning_rates", "learning_rate_share", "num_params"):
            if key in s:
                console.print(safe(f"{key}: {fmt(s[key])}"))
        if partition.unresolved:
            console.print(
                f"[bold yellow]unresolved[/] ({len(partition.unresolved)}): {safe(', '.join(partition.unresolved[:8]))}"
            )
        if verify:
            for rule in doc["verify"]["rules"]:
                verdict = "pass" if rule["passed"] else "FAIL"
                console.print(
                    safe(
                        f"rule {rule['key']}: share {fmt(rule['share'], 3)} vs random {fmt(rule['random_mean'], 3)}: "
                        f"{verdict}"
                    )
                )
        console.print(f"wrote {safe(out)}")
    return doc


def register(app: typer.Typer) -> None:
    """Add ``spectra partition`` to the app."""
    app.command(name="partition")(partition_command)


def partition_command(
    model: Annotated[str | None, typer.Argument(help="HF model folder (config.json + weights).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output JSON file.")] = Path("partition.json"),
    factory: Annotated[
        str | None, typer.Option("--model-factory", help="module:function returning model, loss, batches.")
    ] = None,
    weights: Annotated[
        str | None, typer.Option("--weights", help="Checkpoint to load into the factory model.")
    ] = None,
    data: o.Data = None,
    task: o.Task = None,
    allow_missing: o.AllowMissing = False,
    verify: Annotated[bool, typer.Option("--verify", help="Measure each rule's Hessian mass share.")] = False,
    max_columns: Annotated[
        int, typer.Option("--max-columns", help="Exact Hessian columns per tensor.")
    ] = 2048,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Adam-mini partition: one second-moment value per Hessian block, with an adam-mini config."""
    run_partition(
        model=model, out=out, factory=factory, weights=weights, data=data, task=task, verify=verify,
        max_columns=max_columns, seed=seed, quiet=quiet, allow_missing=allow_missing,
    )  # fmt: skip
