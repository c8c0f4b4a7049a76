"""Running the console entry point in-process, and what a clean failure looks like."""

from __future__ import annotations

from pathlib import Path

from hessian_spectra.cli.main import main

# a --model-factory script: a tiny float64 MLP with cross-entropy on one batch
FACTORY = """
import torch
from torch import nn
from hessian_spectra.curvature.losses import cross_entropy

def make():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g))]
    return {"model": model, "loss": cross_entropy, "batches": batches}
"""


# the smallest Hessian budget a CLI run accepts: for tests of inputs and failures, not of numbers
TINY_BUDGET = [
    "--top-k",
    "1",
    "--probes",
    "1",
    "--steps",
    "4",
    "--block-probes",
    "1",
    "--block-steps",
    "2",
    "--quiet",
]


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the console entry point in-process; return (exit code, stdout, stderr)."""
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_failure(code: int, stderr: str, needle: str, out: Path) -> None:
    assert code == 2
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("spectra: error: ")
    assert needle in lines[0]
    assert "Traceback" not in stderr
    assert not out.exists()
