"""Resumable runs: a `spectra hessian` / `spectra analyze` run killed mid-way (SIGINT, SIGKILL) continues
with --resume and gives the same report numbers as an uninterrupted run; a resume with other settings or
inputs is refused in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from support.cli import FACTORY, run_cli

# after the named phase is saved, the run signals itself (deterministic: no timing race)
KILLER = """
import os, signal
_after = os.environ.get("SPECTRA_TEST_KILL_AFTER")
if _after:
    from hessian_spectra.curvature import resume as _resume
    _save = _resume.ResumeStore.save
    def _save_then_kill(self, phase, value):
        _save(self, phase, value)
        name, sig = _after.split(":")
        if phase == name:
            os.kill(os.getpid(), getattr(signal, sig))
    _resume.ResumeStore.save = _save_then_kill
"""

# 279 parameters > probes x steps: Lanczos, full SLQ, block SLQ (weights) and exact blocks (biases)
BUDGET = ["--top-k", "2", "--probes", "2", "--steps", "8", "--block-probes", "2", "--block-steps", "8",
          "--quiet"]  # fmt: skip


def _factory(tmp_path):
    path = tmp_path / "factory.py"
    path.write_text(FACTORY + KILLER)
    return f"{path}:make"


def _numbers(out):
    """report.json without timings and provenance: what an interrupted and resumed run must reproduce."""
    doc = json.loads((out / "report.json").read_text())
    # timings, and the plan (measured unit costs) with its per-phase actuals (a resumed run redoes less)
    hessian = {k: v for k, v in doc["hessian"].items() if k not in ("seconds", "plan", "actual")}
    summary = [line for line in doc["summary"] if "Hessian-vector products in" not in line]  # a timing
    return {"hessian": hessian, "heterogeneity": doc["heterogeneity"], "summary": summary,
            "findings": doc.get("findings")}  # fmt: skip


def _killed_run(args, kill: str, tmp_path):
    env = {**os.environ, "SPECTRA_TEST_KILL_AFTER": kill}
    # a shell's background job starts with SIGINT ignored: give the run Python's usual Ctrl-C handler
    code = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    code += "from hessian_spectra.cli.main import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)  # fmt: skip


@pytest.mark.parametrize(
    ("command", "kill"),
    [
        ("hessian", "slq:SIGKILL"),
        pytest.param("hessian", "lanczos:SIGINT", marks=pytest.mark.slow),
        pytest.param("analyze", "block_slq:SIGTERM", marks=pytest.mark.slow),
    ],
)
def test_killed_run_resumes_to_the_same_report(tmp_path, capsys, command, kill):
    factory = _factory(tmp_path)
    extra = ["--no-weights", "--no-structure"] if command == "analyze" else []
    ref = tmp_path / "ref"
    code, _, err = run_cli([command, "--model-factory", factory, "--out", str(ref), *BUDGET, *extra], capsys)
    assert code == 0, err
    out = tmp_path / "out"
    args = [command, "--model-factory", factory, "--out", str(out), *BUDGET, *extra]
    proc = _killed_run(args, kill, tmp_path)
    phase, sig = kill.split(":")
    state = out / ".spectra-resume"
    assert (state / f"{phase}.pt").is_file() and not (out / "report.json").exists()
    if sig == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 128 + getattr(signal, sig), proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert lines[0].startswith(f"spectra: error: {command}: interrupted by {sig}; ")
        assert "--resume" in lines[0] and "saved in" in lines[0]
    code, _, err = run_cli([*args, "--resume"], capsys)
    assert code == 0, err
    assert _numbers(out) == _numbers(ref)
    assert phase in json.loads((out / "report.json").read_text())["provenance"]["resumed_phases"]
    assert not state.exists()  # removed once the report is written
    assert ".spectra-resume" not in (out / ".spectra-manifest.json").read_text()


def _interrupt_after(monkeypatch, name: str):
    """In-process Ctrl-C right after phase ``name`` is saved (what the SIGINT handler raises)."""
    from hessian_spectra.curvature import resume
    from hessian_spectra.errors import Interrupted

    save = resume.ResumeStore.save

    def save_then_interrupt(self, phase, value):
        save(self, phase, value)
        if phase == name:
            raise Interrupted(signal.SIGINT)

    monkeypatch.setattr(resume.ResumeStore, "save", save_then_interrupt)


def test_ctrl_c_saves_progress_in_one_line_and_analyze_resumes(tmp_path, capsys, monkeypatch):
    """In-process twin of the SIGINT subprocess test (fast): exit 130, one line, the same numbers."""
    factory = _factory(tmp_path)
    ref, out = tmp_path / "ref", tmp_path / "out"
    extra = ["--no-weights", "--no-structure"]
    assert (
        run_cli(["analyze", "--model-factory", factory, "--out", str(ref), *BUDGET, *extra], capsys)[0] == 0
    )
    args = ["analyze", "--model-factory", factory, "--out", str(out), *BUDGET, *extra]
    with monkeypatch.context() as m:
        _interrupt_after(m, "block_slq")
        code, _, err = run_cli(args, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 130 and len(lines) == 1, err
    assert "interrupted by SIGINT; 3 finished phase(s) saved in" in lines[0] and "--resume" in lines[0]
    assert sorted(p.name for p in (out / ".spectra-resume").iterdir()) == [
        "block_slq.pt", "lanczos.pt", "slq.pt", "state.json"
    ]  # fmt: skip
    code, _, err = run_cli([*args, "--resume"], capsys)
    assert code == 0, err
    assert _numbers(out) == _numbers(ref)


def test_resume_with_other_settings_or_inputs_is_refused(tmp_path, capsys, monkeypatch):
    factory = _factory(tmp_path)
    out = tmp_path / "out"
    args = ["hessian", "--model-factory", factory, "--out", str(out), *BUDGET]
    with monkeypatch.context() as m:
        _interrupt_after(m, "lanczos")
        assert run_cli(args, capsys)[0] == 130
    code, _, err = run_cli([*args, "--seed", "1", "--resume"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("spectra: error: --resume: ") and "different settings" in lines[0]
    # other data: the factory's batch changed
    other = tmp_path / "other.py"
    other.write_text(FACTORY.replace("manual_seed(1)", "manual_seed(2)"))
    args2 = ["hessian", "--model-factory", f"{other}:make", "--out", str(out), *BUDGET, "--resume"]
    code, _, err = run_cli(args2, capsys)
    assert code == 2 and "different weights and batches" in err, err
    assert (out / ".spectra-resume" / "lanczos.pt").is_file()  # a refused resume keeps the saved state
    # without --resume the run starts over and leaves no state behind
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert not (out / ".spectra-resume").exists()
