"""`spectra demo`: train a small GPT and a small CNN on synthetic data and write their reports side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from hessian_spectra.cli.console import out_console, safe


def run_demo(
    *,
    out: Path,
    reduced: bool,
    probes: int,
    steps: int,
    seed: int,
    quiet: bool,
    block_probes: int | None = None,
    block_steps: int | None = None,
    threads: int | None = 1,
) -> list[dict]:
    """Train both demo models, write ``<out>/<model>/report.{json,md,html}`` (the `spectra analyze`
    report) and ``<out>/summary.md`` comparing them. ``threads``: torch intra-op threads for the run
    (restored after; None keeps torch's): the demo's models are tiny, and on a shared 2-core machine a
    second thread made one HVP of the GPT 9x slower (bench/RESULTS.md, issue 13), never faster."""
    import torch

    if threads is not None and threads < 1:
        from hessian_spectra.errors import InputError

        raise InputError("--threads", f"must be >= 1, got {threads}")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run_demo(out=out, reduced=reduced, probes=probes, steps=steps, seed=seed, quiet=quiet,
                         block_probes=block_probes, block_steps=block_steps)  # fmt: skip
    finally:
        torch.set_num_threads(before)


def _run_demo(*, out: Path, reduced: bool, probes: int, steps: int, seed: int, quiet: bool,
              block_probes: int | None, block_steps: int | None) -> list[dict]:  # fmt: skip
    import time

    import torch
    from hessian_spectra.analyses.demo import DemoBudget, demo_cases
    from hessian_spectra.analyses.findings.rules import verdict_reasons
    from hessian_spectra.analyses.report.analyze import AnalyzeOptions
    from hessian_spectra.analyses.report.inputs import generated_input
    from hessian_spectra.analyses.report.numbers import fmt
    from hessian_spectra.analyses.report.write import write_report
    from hessian_spectra.cli.analyze_cmd import run_analysis
    from hessian_spectra.curvature.probe import HessianSettings
    from hessian_spectra.io import atomic_write_text, check_output_dir, staged_directory

    check_output_dir(out)
    started = time.perf_counter()
    budget = DemoBudget.reduced() if reduced else DemoBudget()
    settings = HessianSettings(
        top_k=3, probes=probes, steps=steps, block_probes=block_probes or probes,
        block_steps=block_steps or steps, seed=seed,
    )  # fmt: skip
    settings.validate()
    # the structure check samples whole heads (2 of 4; 1 when reduced) per tensor to stay quick
    options = AnalyzeOptions(structure_max_columns=64 if reduced else 128)
    with torch.random.fork_rng():
        cases = demo_cases(seed, budget)
    rows = []
    with staged_directory(out) as stage:
        md = ["# spectra demo: a small transformer vs a small CNN", "",
              "| model | verdict | decided by | flat blocks | exact blocks | mean JS (each convention) |",
              "|---|---|---|---|---|---|"]  # fmt: skip
        details = []
        for case in cases:
            inputs = generated_input(
                f"built-in demo model '{case.name}' trained on synthetic data", by="spectra demo", seed=seed,
                settings={"budget": budget.__dict__, **case.to_dict()},
            )  # fmt: skip
            result = run_analysis(
                case.model, case.batches, case.loss, settings, options, source=f"demo:{case.name}",
                quiet=quiet, label=case.name, extra={"demo": case.to_dict()}, inputs=inputs,
            )  # fmt: skip
            doc = result.doc
            write_report(
                out / case.name, doc, result.figures, stage=stage / case.name, attachments=result.attachments
            )
            het = doc["heterogeneity"]
            reasons = "; ".join(verdict_reasons(het))
            js = ", ".join(f"{k} {fmt(v, 3)}" for k, v in het["mean_js"].items())
            exact = f"{doc['hessian']['num_exact_blocks']} of {len(doc['hessian']['blocks'])}"
            md.append(f"| [{case.name}]({case.name}/report.html) | {het['verdict']} | {reasons} | "
                      f"{len(het['flat_blocks'])} | {exact} | {js} |")  # fmt: skip
            details += [f"## {case.name}: {case.description}", "", "What to do:", "",
                        *[f"{i}. {a['statement']} ({a['confidence']} confidence)" for i, a in enumerate(doc["actions"], 1)],
                        "", *[f"- {f}" for f in doc["summary"]], ""]  # fmt: skip
            rows.append(
                {"name": case.name, "verdict": het["verdict"], "verdict_line": het["verdict_line"],
                 "mean_js": het["mean_js"], "statistic": het["statistic"], "exact_blocks": exact, "reasons": reasons}
            )  # fmt: skip
        md += ["", f"Rule: {het['verdict_rule']}.", "", *details,
               f"Total time {time.perf_counter() - started:.0f} s ({'reduced' if reduced else 'full'} budget, "
               f"{torch.get_num_threads()} torch thread(s))."]  # fmt: skip
        atomic_write_text(stage / "summary.md", "\n".join(md) + "\n")
    if not quiet:
        console = out_console()
        for r in rows:
            console.print(safe(f"{r['name']}: {r['verdict_line']}; exact block spectra: {r['exact_blocks']}"))
        console.print(f"wrote {', '.join(r['name'] for r in rows)} reports and summary.md to {safe(out)}")
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
    block_probes: Annotated[
        int,
        typer.Option(
            "--block-probes", help="SLQ probes per block (each costs one pruned backward per block)."
        ),
    ] = 4,
    block_steps: Annotated[int, typer.Option("--block-steps", help="Lanczos steps per block probe.")] = 24,
    seed: Annotated[int, typer.Option("--seed", help="Seed of data, init and probes.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summary.")] = False,
    threads: Annotated[
        int,
        typer.Option(
            "--threads", help="Torch threads (1: fastest for these tiny models; 0: torch's default)."
        ),
    ] = 1,
) -> None:
    """Train a small GPT-style transformer and a small CNN on synthetic data; compare their Hessian blocks."""
    run_demo(
        out=out, reduced=reduced, probes=probes, steps=steps, seed=seed, quiet=quiet,
        block_probes=block_probes, block_steps=block_steps, threads=threads or None,
    )  # fmt: skip
