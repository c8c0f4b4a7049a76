"""Output files honour the umask (issue #15: they were created 0600 by mkstemp)."""

from __future__ import annotations

import os
import stat

import pytest
from hessian_spectra.io import atomic_write_json, atomic_write_text, staged_directory, umask_mode


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda m: os.umask(m)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_writes_get_the_umask_mode(tmp_path, umask, mask):
    umask(mask)
    assert umask_mode() == 0o666 & ~mask
    atomic_write_text(tmp_path / "a.txt", "x")
    with staged_directory(tmp_path / "out") as stage:
        atomic_write_json(stage / "sub" / "b.json", {"x": 1})
    for f in (tmp_path / "a.txt", tmp_path / "out" / "sub" / "b.json"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f
    assert os.umask(mask) == mask  # reading the mode left the umask as it was


def test_cli_outputs_are_readable_by_the_group_under_umask_022(tmp_path, umask, capsys):
    from support.cli import run_cli

    umask(0o022)
    out = tmp_path / "w"
    code, _, err = run_cli(["weights", "--example", "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in files), [
        (p.name, oct(p.stat().st_mode)) for p in files
    ]
