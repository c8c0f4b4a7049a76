"""`spectra demo`: train a small GPT and a small CNN on synthetic data and write their Hessian reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.console import out_console


def run_demo(*, out: Path, reduced: bool, probes: int, steps: int, seed: int, quiet: bool) -> list[dict]:
    """Train both demo models, probe them, write ``<out>/<model>/hessian.{json,md}`` and ``summary.md``."""
    import torch

    from analyses.demo import DemoBudget, demo_cases
    from analyses.heterogeneity import analyze_heterogeneity, spectra_from_hessian
    from cli.hessian_cmd import hessian_document, probe, summary_lines
    from spectra.hessian_probe import HessianSettings
    from spectra.io import atomic_write_json, atomic_write_text, staged_directory

    budget = DemoBudget.reduced() if reduced else DemoBudget()
    settings = HessianSettings(probes=probes, steps=steps, block_probes=probes, block_steps=steps, seed=seed)
    settings.validate()
    with torch.random.fork_rng():
        cases = demo_cases(seed, budget)
    rows = []
    with staged_directory(out) as stage:
        md = ["# spectra demo: a small transformer vs a small CNN", ""]
        for case in cases:
            report = probe(case.model, case.batches, case.loss, settings, quiet=quiet, label=case.name)
            het = analyze_heterogeneity(spectra_from_hessian(report))
            doc = hessian_document(
                report, het, source=f"demo:{case.name}", seed=seed, extra={"demo": case.to_dict()}
            )
            atomic_write_json(stage / case.name / "hessian.json", doc)
            lines = summary_lines(report, het)
            atomic_write_text(stage / case.name / "hessian.md", f"# {case.description}\n\n" + "\n".join(
                f"- {line}" for line in lines) + "\n")  # fmt: skip
            md += [f"## {case.name}: {case.description}", "", *[f"- {line}" for line in lines], ""]
            rows.append({"name": case.name, "verdict": het.verdict, "mean_js": het.mean_js,
                         "lambda_max_spread": het.scale_spread["lambda_max"]["ratio"]})  # fmt: skip
        atomic_write_text(stage / "summary.md", "\n".join(md) + "\n")
    if not quiet:
        console = out_console()
        for r in rows:
            spread = r["lambda_max_spread"]
            console.print(f"{r['name']}: {r['verdict']} (block lambda_max spread {spread:.3g}x)")
        console.print(f"wrote {', '.join(r['name'] for r in rows)} reports and summary.md to {out}")
    return rows


def register(app: typer.Typer) -> None:
    """Add ``spectra demo`` to the app."""
    app.command(name="demo")(demo)


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("spectra-out/demo"),
    reduced: Annotated[
        bool, typer.Option("--reduced", help="Tiny training budget (seconds; for tests).")
    ] = False,
    probes: Annotated[int, typer.Option("--probes", help="SLQ probes (full model and per block).")] = 10,
    steps: Annotated[int, typer.Option("--steps", help="Lanczos steps per SLQ probe.")] = 40,
    seed: Annotated[int, typer.Option("--seed", help="Seed of data, init and probes.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summary.")] = False,
) -> None:
    """Train a small GPT-style transformer and a small CNN on synthetic data; compare their Hessian blocks."""
    run_demo(out=out, reduced=reduced, probes=probes, steps=steps, seed=seed, quiet=quiet)
