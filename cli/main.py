"""The ``spectra`` command line: parses arguments, wires the probes, shows progress, writes files.

No maths lives here. Every error the tool raises on purpose (:class:`hessian_spectra.errors.SpectraError`) is
printed as one line naming the file and the problem, with exit code 2, and no partial output.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from hessian_spectra.cli.console import err_console, fail, progress_bar

app = typer.Typer(
    name="spectra",
    help="Curvature (Hessian) and weight spectra of PyTorch checkpoints, and what to do about them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # click's plain help: flags read as flags (`--plots / --no-plots`, `-q, --quiet`); typer's rich panels
    # print a `<bool>` value after every flag, which the flag does not take
    rich_markup_mode=None,
)


def version_line() -> str:
    """``hessian-spectra X (python ..., torch ..., numpy ..., scipy ...)``, without importing torch."""
    from hessian_spectra.weights.provenance import provenance

    info = provenance(seed=0)
    deps = ", ".join(f"{k} {info[k]}" for k in ("python", "torch", "numpy", "scipy"))
    return f"hessian-spectra {info['tool_version']} ({deps})"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_line())
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version (and torch, numpy, scipy) and exit.",
                     callback=_print_version, is_eager=True),
    ] = False,
) -> None:  # fmt: skip
    """Curvature (Hessian) and weight spectra of PyTorch checkpoints, and what to do about them."""


@app.command()
def version() -> None:
    """Print the versions of hessian-spectra and its main dependencies."""
    typer.echo(version_line())


def _register_commands() -> None:
    """Each command lives in its own module with a ``register(app)`` function; add new ones here."""
    from hessian_spectra.cli import (
        analyze_cmd,
        demo_cmd,
        hessian_cmd,
        partition_cmd,
        recommend_cmd,
        weights_cmd,
    )

    for module in (weights_cmd, hessian_cmd, analyze_cmd, demo_cmd, recommend_cmd, partition_cmd):
        module.register(app)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning deliberate errors into one-line messages."""
    from hessian_spectra.errors import SpectraError

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
