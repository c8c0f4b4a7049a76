"""`spectra analyze`: the whole report (weights, Hessian, heterogeneity, head structure, recommendations)
in one folder: report.json, report.md and a self-contained report.html."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from hessian_spectra.cli import options as o
from hessian_spectra.cli.console import err_console, out_console, progress_bar, safe
from hessian_spectra.errors import InputError


def run_analysis(model, batches, loss, settings, options, *, source: str, weights_source=None, quiet: bool,
                 label: str = "analyze", extra=None, kind: str = "analyze", inputs=None, resume=None):  # fmt: skip
    """Run :func:`hessian_spectra.analyses.report.analyze.analyze_model` with the cost estimate printed first and progress bars."""
    from hessian_spectra.analyses.report.analyze import analyze_model

    def announce(cost) -> None:
        if not quiet:
            err_console().print(f"[bold]{safe(label)}[/]: cost estimate {safe(cost.describe())}")

    def announce_plan(plan) -> None:
        if not quiet:
            for line in plan.table().splitlines():
                err_console().print(safe(line), highlight=False)

    # one bar per Hessian phase ("hessian: Lanczos", "gpt: block SLQ"); never "hessian hessian"
    with progress_bar(label, quiet=quiet, unit="steps", phased=True) as update:
        return analyze_model(
            model, batches, loss, settings, source=source, options=options, weights_source=weights_source,
            progress=update, on_estimate=announce, on_plan=announce_plan, extra=extra, kind=kind, inputs=inputs,
            resume=resume,
        )  # fmt: skip


def run_analyze_cmd(*, factory: str | None, weights: str | None, model_dir: str | None, data: str | None,
                    task: str | None, batch_size: int, seq_len: int, batches: int, out: Path, settings, options,
                    quiet: bool, kind: str = "analyze", device: str | None = None,
                    device_map: str | None = None, allow_missing: bool = False, resume: bool = False) -> dict:  # fmt: skip
    """Load the workload (factory or HF directory), analyse, write the report folder atomically.
    ``kind="hessian"`` (with every non-Hessian option off) is `spectra hessian`."""
    from hessian_spectra.analyses.report.inputs import factory_inputs, hf_inputs
    from hessian_spectra.analyses.report.write import write_report
    from hessian_spectra.io import check_output_dir

    settings.validate()
    check_output_dir(out)  # a bad --out fails now, not after the analysis
    if (factory is None) == (model_dir is None):
        raise InputError(
            "MODEL", "give either a Hugging Face model directory or --model-factory module:function"
        )
    if factory is not None:
        from hessian_spectra.analyses.workloads import load_factory

        if device_map is not None:
            raise InputError(
                "--device-map", "needs a Hugging Face model directory (a factory places its own model)"
            )
        if allow_missing:
            raise InputError(
                "--allow-missing",
                "is for a Hugging Face model directory (--weights must match the factory's model)",
            )
        work = load_factory(factory, weights, device=device)
    else:
        from hessian_spectra.analyses.workloads import load_hf_workload

        if data is None:
            raise InputError(
                "--data", "a text/JSONL file or an image folder is required with a model directory"
            )
        work = load_hf_workload(model_dir, data, task=task, batch_size=batch_size, seq_len=seq_len,
                                max_batches=batches, device=device, device_map=device_map,
                                dtype=settings.dtype, allow_missing=allow_missing)  # fmt: skip
    work_batches = work.batches[:batches] if batches else work.batches
    extra = work.report_extra()
    loaded = extra.pop("inputs") or {}  # what the workload was built from (task, pairs, images, pooling, ...)
    if factory is not None:
        inputs = {**loaded, **factory_inputs(factory, weights, work_batches)}
    else:
        inputs = {**loaded, **hf_inputs(model_dir, data, task=loaded.get("task"), tokenizer=loaded.get("tokenizer"),
                                         batch_size=batch_size, seq_len=loaded.get("seq_len", seq_len),
                                         batches=work_batches)}  # fmt: skip
    store = resume_store(
        out, work.model, work_batches, settings, options, kind=kind, device=device, resume=resume
    )
    resumed = list(store.saved)
    if resumed and not quiet:
        err_console().print(
            f"resuming: {len(store.saved)} finished phase(s) loaded from {safe(store.folder)}"
        )
    # weights_source None: the live module (a factory's, with --weights loaded); else the model folder
    with saved_on_interrupt(store):
        result = run_analysis(work.model, work_batches, work.loss, settings, options, source=work.source,
                              weights_source=work.weights_source, quiet=quiet, label=kind, kind=kind, extra=extra,
                              inputs=inputs, resume=store)  # fmt: skip
    if resumed:  # the report says which phases came from the interrupted run (numbers are the same)
        result.doc["provenance"]["resumed_phases"] = resumed
    written = write_report(out, result.doc, result.figures, attachments=result.attachments)
    store.discard()
    if not quiet:
        print_actions(result.doc)
        out_console().print(
            f"wrote {', '.join(sorted({p.relative_to(out).parts[0] for p in written}))} to {safe(out)}"
        )
    return result.doc


def resume_store(out: Path, model, batches, settings, options, *, kind: str, device, resume: bool):
    """The run's :class:`~hessian_spectra.curvature.resume.ResumeStore`: keyed by everything that decides
    the Hessian numbers (command, settings, options, device, versions, a hash of weights and batches)."""
    from hessian_spectra.curvature.resume import ResumeStore, fingerprint
    from hessian_spectra.weights.provenance import provenance

    prov = provenance(settings.seed)
    key = {"command": kind, "settings": settings.to_dict(), "options": options.to_dict(), "device": str(device),
           "versions": {k: prov[k] for k in ("tool_version", "torch", "numpy", "scipy", "python")},
           "weights and batches": fingerprint(model, batches)}  # fmt: skip
    return ResumeStore(out, key, resume=resume)


@contextmanager
def saved_on_interrupt(store):
    """Ctrl-C (or SIGTERM/SIGHUP) during the run: the one-line message says what was saved and how to go on."""
    from hessian_spectra.errors import Interrupted

    try:
        yield
    except Interrupted as exc:
        if store.saved:
            exc.args = (f"{exc}; {len(store.saved)} finished phase(s) saved in {store.folder}: rerun the same "
                        "command with --resume to continue",)  # fmt: skip
        raise


def print_actions(doc) -> None:
    """The report's "what to do" on the terminal: each action with its confidence, then the summary."""
    console = out_console()
    for i, a in enumerate(doc.get("actions") or [], 1):
        console.print(
            safe(f"{i}. {a['statement']} ")
            + f"[dim]({safe(a['confidence'])} confidence; report section #{safe(a['anchor'])})[/]"
        )
    for line in doc.get("summary") or []:
        console.print(safe(line))


def register(app: typer.Typer) -> None:
    """Add ``spectra analyze`` to the app."""
    app.command(name="analyze")(analyze)


def analyze(
    model_dir: o.ModelDir = None,
    data: o.Data = None,
    task: o.Task = None,
    model_factory: o.ModelFactory = None,
    weights: o.Weights = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("spectra-out/report"),
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
    structure_columns: Annotated[
        int, typer.Option("--structure-columns", help="Exact Hessian columns per tensor in the head check.")
    ] = 1024,
    no_structure: Annotated[
        bool, typer.Option("--no-structure", help="Skip the per-head structure check.")
    ] = False,
    no_weights: Annotated[bool, typer.Option("--no-weights", help="Skip the weight spectra.")] = False,
    optimizer: Annotated[str, typer.Option("--optimizer", help="adamw or muon (recommendations).")] = "adamw",
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
    """The full report: Hessian spectra, block heterogeneity, head structure, weight spectra, recommendations."""
    from hessian_spectra.analyses.report.analyze import AnalyzeOptions

    if optimizer.lower() not in ("adamw", "muon"):
        raise InputError("--optimizer", f"must be adamw or muon, got {optimizer!r}")
    settings = o.hessian_settings(
        batches=batches, top_k=top_k, probes=probes, steps=steps, block_probes=block_probes, block_steps=block_steps,
        blocks=blocks, max_blocks_per_tensor=max_blocks_per_tensor, heads=heads, dtype=dtype, seed=seed, exact=exact,
        confidence=confidence, time_limit=time_limit, budget=budget, max_memory=max_memory,
    )  # fmt: skip
    dev, device_map = o.resolve_placement(device, device_map)
    options = AnalyzeOptions(
        weights=not no_weights, structure=not no_structure, structure_max_columns=structure_columns,
        recommendations=not no_weights, optimizer=optimizer.lower(), n_heads=heads, weights_device=dev,
    )  # fmt: skip
    run_analyze_cmd(factory=model_factory, weights=weights, model_dir=model_dir, data=data, task=task,
                    batch_size=batch_size, seq_len=seq_len, batches=batches, out=out, settings=settings,
                    options=options, quiet=quiet, device=dev, device_map=device_map,
                    allow_missing=allow_missing, resume=resume)  # fmt: skip
