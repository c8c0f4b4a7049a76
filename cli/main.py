"""The ``spectra`` command line: parses arguments, wires the probes, shows progress, writes files.

No maths lives here. Every way a run can end badly (an error the tool raises on purpose, a bad option,
an exception from torch, transformers or a user's factory, a signal) is one line on stderr,
``spectra: error: <where>: <what>``, with exit code 2 (128 + N for signal N); ``--debug`` or
``SPECTRA_DEBUG=1`` adds the full traceback (see :mod:`hessian_spectra.cli.failures`).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, NoReturn

import typer
from hessian_spectra.cli.console import error_line, progress_bar

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
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help="Full tracebacks and library warnings (anywhere on the line; or SPECTRA_DEBUG=1)."
        ),
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
        track_cmd,
        weights_cmd,
    )

    for module in (weights_cmd, hessian_cmd, analyze_cmd, demo_cmd, recommend_cmd, partition_cmd, track_cmd):
        module.register(app)


_register_commands()


def _split_debug(args: list[str]) -> tuple[list[str], bool]:
    """Remove ``--debug`` from anywhere before a ``--`` (so ``spectra weights X --debug`` works too)."""
    end = args.index("--") if "--" in args else len(args)
    kept = [a for a in args[:end] if a != "--debug"] + args[end:]
    env = os.environ.get("SPECTRA_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
    return kept, env or len(kept) != len(args)


def main(argv: list[str] | None = None) -> NoReturn:
    """Console-script entry point: run the app; any failure is one line (traceback with --debug)."""
    from hessian_spectra.cli.failures import Noise, quiet_libraries, raised_in_command
    from hessian_spectra.signals import raising_signals

    args, debug = _split_debug(list(sys.argv[1:] if argv is None else argv))
    command = next((a for a in args if not a.startswith("-")), "spectra")
    quiet = "--quiet" in args or "-q" in args
    noise = Noise()
    try:
        with raising_signals(only_default=False):  # Ctrl-C, SIGTERM, SIGHUP: one line, every finally runs
            if debug:
                result = app(args=args, prog_name="spectra", standalone_mode=False)
            else:
                with quiet_libraries(noise):
                    result = app(args=args, prog_name="spectra", standalone_mode=False)
    except SystemExit as exc:
        if not raised_in_command(exc):
            raise  # the parser's own exits (help, a closed pipe) keep their code
        _report(exc, command, debug)
    except BaseException as exc:  # noqa: BLE001 - every way out becomes one line
        _no_args_help(exc)
        _report(exc, command, debug)
    if result == 130:  # typer turns a KeyboardInterrupt raised by code (not a signal) into Exit(130)
        _report(KeyboardInterrupt(), command, debug=False)
    summary = noise.summary()
    if summary and not quiet:
        print(summary, file=sys.stderr)
    raise SystemExit(result if isinstance(result, int) else 0)  # as click's standalone mode ends


def _report(exc: BaseException, command: str, debug: bool) -> None:
    """Print the one-line message (after the traceback with --debug) and exit with the code."""
    from hessian_spectra.cli.failures import describe

    if debug:
        import traceback

        traceback.print_exception(exc)
    try:
        message, code = describe(exc, command)
    except Exception:  # noqa: BLE001 - the report itself must never raise
        message, code = f"{command}: internal error: {type(exc).__name__}: {exc}", 2
    print(error_line(message), file=sys.stderr)
    raise SystemExit(code) from None


def _no_args_help(exc: BaseException) -> None:
    """``spectra`` alone (or a group without a command) prints the help, as click would, and exits 0."""
    if type(exc).__name__ == "NoArgsIsHelpError" and hasattr(exc, "ctx") and exc.ctx is not None:
        print(exc.ctx.get_help())
        raise SystemExit(0) from None


__all__ = ["app", "main", "progress_bar"]

if __name__ == "__main__":
    main()
