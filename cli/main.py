"""The ``spectra`` command line: parses arguments, wires the probes, shows progress, writes files.

No maths lives here. Every error the tool raises on purpose (:class:`spectra.errors.SpectraError`) is
printed as one line naming the file and the problem, with exit code 2, and no partial output.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.console import err_console, fail, progress_bar

app = typer.Typer(
    name="spectra",
    help="Curvature (Hessian) and weight spectra of PyTorch checkpoints, and what to do about them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def weights(
    path: Annotated[
        str | None,
        typer.Argument(help="Checkpoint: .safetensors, sharded index, HF folder, .bin/.pt state dict."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("spectra-out/weights"),
    format: Annotated[str, typer.Option("--format", help="Comma-separated: json,csv.")] = "json,csv",
    plots: Annotated[bool, typer.Option("--plots", help="Also write ESD and depth figures (PNG).")] = False,
    layers: Annotated[
        list[str] | None, typer.Option("--layers", help="Glob on tensor names; repeat for several.")
    ] = None,
    topk: Annotated[
        int | None, typer.Option("--topk", help="Only the top/bottom-K singular values (huge matrices).")
    ] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="float64 (exact) or float32.")] = "float64",
    threads: Annotated[int | None, typer.Option("--threads", help="Torch threads for the SVDs.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for randomized partial spectra.")] = 0,
    example: Annotated[
        bool, typer.Option("--example", help="Write a small built-in checkpoint into OUT and analyse it.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or table.")] = False,
    table_rows: Annotated[int, typer.Option("--table-rows", help="Rows of the terminal table.")] = 40,
) -> None:
    """Singular-value spectra and metrics of every weight matrix (ranks, condition numbers, alpha, MP)."""
    from cli.weights_cmd import run_weights

    run_weights(
        path=path, out=out, formats=format, plots=plots, layers=tuple(layers or ()), topk=topk, dtype=dtype,
        threads=threads, seed=seed, example=example, quiet=quiet, table_rows=table_rows,
    )  # fmt: skip


@app.command()
def version() -> None:
    """Print the versions of hessian-spectra and its main dependencies."""
    from spectra.weights import provenance

    info = provenance(seed=0)
    for key in ("tool_version", "python", "torch", "numpy", "scipy"):
        typer.echo(f"{key}: {info[key]}")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning deliberate errors into one-line messages."""
    from spectra.errors import SpectraError

    try:
        app(args=argv, prog_name="spectra", standalone_mode=True)
    except SpectraError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        err_console().print("interrupted")
        sys.exit(130)


__all__ = ["app", "main", "progress_bar"]

if __name__ == "__main__":
    main()
