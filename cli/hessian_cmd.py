"""`spectra hessian`: the Hessian probe alone (full-model Lanczos + SLQ, block SLQ, heterogeneity)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.console import err_console, out_console, progress_bar
from spectra.errors import InputError

SCHEMA_VERSION = "1.0"


def probe(model, batches, loss, settings, *, quiet: bool, label: str = "hessian"):
    """Run the Hessian probe with the cost estimate printed first and a progress bar in HVPs."""
    from spectra.hessian_probe import run_hessian

    def announce(cost) -> None:
        if not quiet:
            err_console().print(f"[bold]{label}[/]: cost estimate {cost.describe()}")

    with progress_bar(label, quiet=quiet, unit="HVPs") as update:
        return run_hessian(model, batches, loss, settings, progress=update, on_estimate=announce)


def hessian_document(report, heterogeneity, *, source: str, seed: int, extra: dict[str, Any] | None = None):
    """The JSON document `spectra hessian` writes: schema version, provenance, probe results, findings."""
    from spectra.weights import provenance

    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "hessian",
        "source": source,
        "provenance": provenance(seed=seed),
        "hessian": report.to_dict(),
        "heterogeneity": heterogeneity.to_dict(),
        **(extra or {}),
    }


def summary_lines(report, het) -> list[str]:
    """A few human lines: extreme eigenvalues, trace, verdict, spread, top drivers."""
    lines = []
    if report.lanczos is not None:
        lz = report.lanczos
        lines.append(
            f"lambda_max {lz.lambda_max:.6g}, lambda_min {lz.lambda_min:.6g} "
            f"(Lanczos, {lz.steps} steps, converged={lz.converged})"
        )
    if report.density is not None:
        d = report.density
        lines.append(
            f"trace {d.trace:.6g} +- {d.trace_stderr:.2g} (SLQ, {d.num_probes} probes x {d.steps} steps)"
        )
    spread = het.scale_spread["lambda_max"]
    ratio = "-" if spread["ratio"] is None else f"{spread['ratio']:.3g}x"
    lines.append(f"block heterogeneity: {het.verdict} (block lambda_max spread {ratio}; " + ", ".join(
        f"mean JS {k} {v:.3f}" for k, v in het.mean_js.items() if v is not None) + ")")  # fmt: skip
    drivers = het.drivers.get("shape-only", [])[:3]
    if drivers:
        lines.append("driven by: " + ", ".join(f"{r['group']} ({r['num_blocks']} blocks)" for r in drivers))
    lines.append(f"rule: {het.verdict_rule}")
    lines.append(f"{report.num_hvps} HVPs in {report.seconds:.1f} s")
    return lines


def run_hessian_cmd(*, factory: str, weights: str | None, out: Path, settings, quiet: bool) -> None:
    """Load the workload, probe, analyse, write hessian.json and hessian.md atomically."""
    from analyses.data import load_factory
    from analyses.heterogeneity import analyze_heterogeneity, spectra_from_hessian
    from spectra.io import atomic_write_json, atomic_write_text, staged_directory

    settings.validate()
    work = load_factory(factory, weights)
    report = probe(work.model, work.batches, work.loss, settings, quiet=quiet)
    het = analyze_heterogeneity(spectra_from_hessian(report))
    doc = hessian_document(report, het, source=work.source, seed=settings.seed)
    lines = summary_lines(report, het)
    with staged_directory(out) as stage:
        atomic_write_json(stage / "hessian.json", doc)
        atomic_write_text(stage / "hessian.md", "# Hessian spectra: " + work.source + "\n\n" + "\n".join(
            f"- {line}" for line in lines) + "\n")  # fmt: skip
    if not quiet:
        console = out_console()
        for line in lines:
            console.print(line)
        console.print(f"wrote hessian.json, hessian.md to {out}")


def settings_from_options(**kw):
    from spectra.hessian_probe import HessianSettings

    return HessianSettings(**kw)


def register(app: typer.Typer) -> None:
    """Add ``spectra hessian`` to the app."""
    app.command(name="hessian")(hessian)


def hessian(
    model_factory: Annotated[
        str,
        typer.Option("--model-factory", help="module:function returning (model, loss, batches); see docs."),
    ],
    weights: Annotated[
        str | None, typer.Option("--weights", help="Checkpoint weights to load first.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("spectra-out/hessian"),
    top_k: Annotated[int, typer.Option("--top-k", help="Extreme eigenvalues per side (Lanczos).")] = 5,
    probes: Annotated[int, typer.Option("--probes", help="SLQ probes (full model).")] = 10,
    steps: Annotated[int, typer.Option("--steps", help="Lanczos steps per SLQ probe (full model).")] = 50,
    block_probes: Annotated[int, typer.Option("--block-probes", help="SLQ probes per block.")] = 10,
    block_steps: Annotated[int, typer.Option("--block-steps", help="Lanczos steps per block probe.")] = 50,
    blocks: Annotated[str, typer.Option("--blocks", help="tensor or head.")] = "tensor",
    heads: Annotated[int | None, typer.Option("--heads", help="Attention heads (for --blocks head).")] = None,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="float32 or float64 (default: model's).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every random probe.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
) -> None:
    """Hessian spectra: top/bottom eigenvalues, density and trace, per-block spectra and heterogeneity."""
    settings = settings_from_options(
        top_k=top_k, probes=probes, steps=steps, block_probes=block_probes, block_steps=block_steps, blocks=blocks,
        n_heads=heads, dtype=dtype, seed=seed,
    )  # fmt: skip
    if not model_factory:
        raise InputError("--model-factory", "required")
    run_hessian_cmd(factory=model_factory, weights=weights, out=out, settings=settings, quiet=quiet)
