"""Help, version and printed numbers (issue #15): flags shown as flags, `spectra --version`, a few
significant digits on the terminal (full precision stays in the JSON)."""

from __future__ import annotations

import re

import click
import pytest
import typer
from hessian_spectra.analyses.report.numbers import fmt, fmt_percent, fmt_ratio
from hessian_spectra.cli.main import app
from support.cli import run_cli


def _commands():
    group = typer.main.get_command(app)
    return {name: cmd for name, cmd in group.commands.items()}


def test_every_boolean_option_is_a_flag_and_help_shows_no_bool_value(capsys):
    for name, cmd in _commands().items():
        for p in cmd.params:
            if isinstance(p, click.Option) and isinstance(p.type, click.types.BoolParamType):
                assert p.is_flag, f"{name} {p.opts}: a bool option that takes a value"
        code, out, _ = run_cli([name, "--help"], capsys)
        assert code == 0 and "<bool>" not in out and "BOOLEAN" not in out, name
    code, out, _ = run_cli(["weights", "--help"], capsys)
    assert re.search(r"--plots / --no-plots", out)


def test_plots_flag_and_its_negation_parse(tmp_path, capsys):
    out = tmp_path / "w"
    code, _, err = run_cli(["weights", "--example", "--out", str(out), "--no-plots", "-q"], capsys)
    assert code == 0, err
    assert not (out / "esd").exists() and not (out / "depth.png").exists()
    code, _, _ = run_cli(["weights", "--example", "--out", str(tmp_path / "x"), "--plots", "true"], capsys)
    assert code == 2 and not (tmp_path / "x").exists()  # a flag takes no value


def test_version_option_and_command(capsys):
    from importlib.metadata import version

    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out.startswith(f"hessian-spectra {version('hessian-spectra')} (python ")
    assert "torch" in out and len(out.strip().splitlines()) == 1
    code, out2, _ = run_cli(["version"], capsys)
    assert code == 0 and out2 == out


@pytest.mark.parametrize(
    ("x", "text"),
    [
        (0.00974745317017092, "0.009747"), (1.0, "1"), (1.5, "1.5"), (12345.6, "12346"), (99999.99, "1e+05"),
        (123456.7, "1.235e+05"), (-3.21e-05, "-3.21e-05"), (2 / 3, "0.6667"), (0.0, "0"), (-0.0, "0"),
        (float("inf"), "inf"), (float("-inf"), "-inf"), (float("nan"), "-"), (None, "-"), (True, "yes"),
        (7, "7"), (22713216, "22713216"),
    ],
)  # fmt: skip
def test_number_format(x, text):
    assert fmt(x) == text


def test_number_format_helpers_and_numpy_scalars():
    import numpy as np

    assert fmt(np.float64(3.14159)) == "3.142" and fmt(np.int64(5)) == "5" and fmt(np.float32(0.5)) == "0.5"
    assert fmt_ratio(248.12) == "248x" and fmt_ratio(None) == "-" and fmt_percent(0.12345) == "12.3%"


def test_recommend_and_partition_print_rounded_numbers(tmp_path, capsys):
    from hessian_spectra.checkpoints.examples import write_example_checkpoint

    ckpt = write_example_checkpoint(tmp_path / "ckpt")
    code, out, err = run_cli(["recommend", str(ckpt), "--out", str(tmp_path / "rec")], capsys)
    assert code == 0, err
    numbers = re.findall(r"-?\d+\.\d+(?:e[+-]\d+)?", out)
    assert numbers and all(
        len(n.split("e")[0].replace("-", "").replace(".", "").lstrip("0")) <= 4 for n in numbers
    ), numbers
