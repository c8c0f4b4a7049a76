"""Hostile names, output folders and failures through every command (#14): nothing acts on the terminal,
nothing crashes after outputs were written, every failure is one line with exit code 2 (128 + N for
signal N), --out problems are found before any work, and library warnings stay off stderr."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from support import ckpt_factory as cf
from support.cli import FACTORY, assert_clean_failure, run_cli

RAW = ("\x1b", "\x9b", "\x07", "\u202e", "\r")
HOSTILE = {
    "a[/]b.weight": "a[/]b.weight",
    "[bold]loud[/bold].weight": "[bold]loud[/bold].weight",
    "[link=https://evil.example]click[/link].weight": "[link=https://evil.example]click[/link].weight",
    "esc\x1b[31mred\x1b[0m.weight": "esc\\x1b[31mred\\x1b[0m.weight",
    "csi\x9b2J.weight": "csi\\x9b2J.weight",
    "bidi\u202egnp.exe.weight": "bidi\\u202egnp.exe.weight",
    "emoji:smile:.weight": "emoji:smile:.weight",
    "bell\x07cr\r.weight": "bell\\x07cr\\x0d.weight",
}

HOSTILE_FACTORY = FACTORY.replace(
    "    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 3)).double()",
    "    model = nn.Sequential()\n"
    "    model.add_module('in[/]proj', nn.Linear(6, 12))\n"
    "    model.add_module('act', nn.Tanh())\n"
    "    model.add_module('\\x1b[31mhid[bold]\\x9b', nn.Linear(12, 3))\n"
    "    model = model.double()",
)
QUICK = ["--probes", "2", "--steps", "6", "--block-probes", "1", "--block-steps", "4", "--top-k", "1"]


def assert_harmless(text: str) -> None:
    for raw in RAW:
        assert raw not in text, repr(raw)


@pytest.fixture(scope="module")
def hostile_ckpt(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    sd = {name: torch.randn(24, 12, generator=g) for name in HOSTILE}
    return cf.write_safetensors(sd, tmp_path_factory.mktemp("hostile") / "m.safetensors")


def test_weights_table_shows_hostile_names_as_text(hostile_ckpt, tmp_path, capsys):
    """`[/]` used to crash the table after the outputs were written; markup and escapes acted."""
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["weights", str(hostile_ckpt), "--out", str(out)], capsys)
    assert code == 0, stderr
    assert_harmless(stdout + stderr)
    for shown in HOSTILE.values():
        assert shown in stdout, shown
    names = [m["name"] for m in json.loads((out / "weights.json").read_text())["matrices"]]
    assert sorted(names) == sorted(HOSTILE)  # the files keep the real names (JSON escapes them)


def test_recommend_on_hostile_names(hostile_ckpt, tmp_path, capsys):
    code, stdout, stderr = run_cli(["recommend", str(hostile_ckpt), "--out", str(tmp_path / "r")], capsys)
    assert_harmless(stdout + stderr)
    assert code == 0 or (code == 2 and len(stderr.strip().splitlines()) == 1), stderr


@pytest.mark.parametrize("command", [pytest.param("hessian", marks=pytest.mark.slow), "analyze", "partition"])
def test_factory_commands_on_hostile_module_names(tmp_path, capsys, command):
    factory = tmp_path / "hostile.py"
    text = HOSTILE_FACTORY
    if command == "partition":  # a raw 3-D parameter has no partition rule: its name is printed as unresolved
        text = text.replace(
            "    model = model.double()",
            "    model.register_parameter('raw[/]\\x1b[2J', nn.Parameter(torch.zeros(2, 2, 2)))\n    model = model.double()",
        )
    factory.write_text(text)
    out = tmp_path / ("p.json" if command == "partition" else "out")
    extra = {"partition": [], "hessian": QUICK, "analyze": [*QUICK, "--no-structure"]}[command]
    code, stdout, stderr = run_cli(
        [command, "--model-factory", f"{factory}:make", "--out", str(out), *extra], capsys
    )
    assert code == 0, stderr
    assert_harmless(stdout + stderr)
    if command == "partition":
        assert "raw[/]\\x1b[2J" in stdout


def test_error_messages_with_hostile_paths(tmp_path, capsys):
    bad = tmp_path / "x\x1b[2J[/]y\n.safetensors"
    code, _, stderr = run_cli(["weights", str(bad), "--out", str(tmp_path / "o")], capsys)
    assert_clean_failure(code, stderr, "\\x1b[2J[/]y", tmp_path / "o")
    assert_harmless(stderr)


# ---------------------------------------------------------------- --out checked before any work

COMMANDS = {
    "weights": lambda ck, fa, out: ["weights", ck, "--out", out],
    "recommend": lambda ck, fa, out: ["recommend", ck, "--out", out],
    "hessian": lambda ck, fa, out: ["hessian", "--model-factory", fa, "--out", out, *QUICK],
    "analyze": lambda ck, fa, out: ["analyze", "--model-factory", fa, "--out", out, *QUICK],
    "demo": lambda ck, fa, out: ["demo", "--reduced", "--out", out],
    "partition": lambda ck, fa, out: ["partition", "--model-factory", fa, "--out", out],
}


def _no_work(monkeypatch):
    """Make every loader/probe raise, so a run that gets past the output check fails loudly."""
    from hessian_spectra.analyses import demo, workloads
    from hessian_spectra.weights import probe

    def ran(*a, **k):
        raise AssertionError("work started before the output folder was checked")

    monkeypatch.setattr(probe, "analyze_weights", ran)
    monkeypatch.setattr(workloads, "load_factory", ran)
    monkeypatch.setattr(demo, "demo_cases", ran)


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("problem", ["file", "under-file", "read-only", "full"])
def test_bad_out_is_one_line_before_any_work(tmp_path, capsys, monkeypatch, command, problem):
    from hessian_spectra import io

    ck = cf.write_safetensors(cf.tiny_state_dict(), tmp_path / "m.safetensors")
    factory = tmp_path / "f.py"
    factory.write_text(FACTORY)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    out = {"file": blocker, "under-file": blocker / "sub" / "out"}.get(problem, tmp_path / "out")
    if command == "partition" and problem != "file":
        out = out / "p.json"
    if problem in ("read-only", "full"):
        err = errno.EROFS if problem == "read-only" else errno.ENOSPC

        def refuse(folder):
            raise OSError(err, os.strerror(err))

        monkeypatch.setattr(io, "_probe_write", refuse)
    _no_work(monkeypatch)
    code, _, stderr = run_cli(COMMANDS[command](str(ck), f"{factory}:make", str(out)), capsys)
    needle = {"file": "a file", "under-file": "is a file", "read-only": "Read-only", "full": "No space"}[
        problem
    ]
    if command == "partition" and problem == "file":
        needle = ".json"  # partition wants a .json file name: refused before the output check
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("spectra: error: ") and needle in stderr and "work started" not in stderr
    assert blocker.read_text() == "a file" and not (tmp_path / "out").exists()


UNSHARE = shutil.which("unshare")


def _in_tmpfs(tmp_path, size: str, fill_kb: int, args: list[str]) -> subprocess.CompletedProcess:
    """Run the CLI with --out on a private tmpfs of ``size`` (own mount namespace; gone afterwards)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    script = textwrap.dedent(
        f"""
        set -e
        mount -t tmpfs -o size={size} none {mnt}
        {"dd if=/dev/zero of=" + str(mnt / "fill") + f" bs=1k count={fill_kb} 2>/dev/null || true" if fill_kb else ""}
        set +e
        {sys.executable} -m hessian_spectra.cli.main {" ".join(args)} --out {mnt}/out
        rc=$?
        echo "rc=$rc" >&2
        ls -A {mnt} >&2
        ls -A {mnt}/out 2>/dev/null | sed 's/^/LS: /' >&2
        """
    )
    return subprocess.run([UNSHARE, "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(UNSHARE is None, reason="needs unshare(1) for a private tmpfs")
def test_real_full_disk(tmp_path):
    ck = cf.write_safetensors(cf.tiny_state_dict(), tmp_path / "m.safetensors")
    probe = subprocess.run([UNSHARE, "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("user namespaces are not allowed here")
    # 1) nothing left: the output check refuses before any work
    full = _in_tmpfs(tmp_path, "16k", 64, ["weights", str(ck), "--quiet"])
    lines = full.stderr.strip().splitlines()
    assert lines[0].startswith("spectra: error: ") and "No space left on device" in lines[0], full.stderr
    assert lines[1] == "rc=2" and "LS: " not in full.stderr
    # 2) room for the probe but not for weights.json: a write error, one line, nothing left behind
    tight = _in_tmpfs(tmp_path, "8k", 0, ["weights", str(ck), "--quiet"])
    lines = tight.stderr.strip().splitlines()
    assert lines[0].startswith("spectra: error: ") and "No space left on device" in lines[0], tight.stderr
    assert "nothing was changed" in lines[0] and lines[1] == "rc=2"
    assert not [line for line in lines if line.startswith("LS: ")]  # no stage, no partial file


# ---------------------------------------------------------------- sets, one-line failures, warnings


def test_rerun_replaces_the_previous_set_and_keeps_user_files(tmp_path, capsys):
    from hessian_spectra.output_set import MANIFEST

    ck = cf.write_safetensors(cf.tiny_state_dict(), tmp_path / "m.safetensors")
    out = tmp_path / "out"
    assert run_cli(["weights", str(ck), "--out", str(out), "--quiet"], capsys)[0] == 0
    (out / "my-notes.txt").write_text("mine")
    assert run_cli(["weights", str(ck), "--out", str(out), "--quiet", "--format", "json"], capsys)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, "weights.json", "my-notes.txt"])


def test_internal_error_one_line_and_debug_traceback(tmp_path, capsys, monkeypatch):
    from hessian_spectra.weights import probe

    def broken(*a, **k):  # a bug inside the package: metrics asked for the wrong number of values
        from hessian_spectra.weights.metrics import compute_metrics

        return compute_metrics(np.ones(3), (5, 7))

    monkeypatch.setattr(probe, "analyze_weights", broken)
    ck = cf.write_safetensors(cf.tiny_state_dict(), tmp_path / "m.safetensors")
    args = ["weights", str(ck), "--out", str(tmp_path / "o")]
    code, _, stderr = run_cli(args, capsys)
    assert_clean_failure(
        code, stderr, "weights: internal error: ValueError: matrix: expected 5 singular", tmp_path / "o"
    )
    assert stderr.count("\n") == 1  # not even a blank line
    assert "--debug" in stderr
    for debug in (["--debug"], []):
        if not debug:
            monkeypatch.setenv("SPECTRA_DEBUG", "1")
        code, _, stderr = run_cli([*args, *debug], capsys)
        assert code == 2 and "Traceback (most recent call last)" in stderr and "metrics.py" in stderr
        assert stderr.strip().splitlines()[-1].startswith("spectra: error: weights: internal error")


NOISY = """
import logging, warnings
import torch
from torch import nn

def make(fail=False):
    warnings.warn("python noise", UserWarning)
    import transformers
    transformers.utils.logging.get_logger("transformers.noise").warning("transformers noise")
    logging.getLogger("accelerate.noise").warning("logger without handlers")
    if fail:
        raise ValueError("factory failed\\nwith a second line")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3)).double()
    return model, None, [(torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,)))]

def make_failing():
    return make(fail=True)

def interrupt():
    raise KeyboardInterrupt

def exits():
    import sys
    sys.exit(0)
"""


@pytest.fixture
def noisy(tmp_path):
    path = tmp_path / "noisy.py"
    path.write_text(NOISY.replace("model, None,", "model, __import__('hessian_spectra').cross_entropy,"))
    return path


@pytest.mark.parametrize("quiet", [[], ["--quiet"]])
def test_failing_run_with_library_warnings_is_one_line(tmp_path, capsys, noisy, quiet):
    out = tmp_path / "p.json"
    code, _, stderr = run_cli(
        ["partition", "--model-factory", f"{noisy}:make_failing", "--out", str(out), *quiet], capsys
    )
    assert_clean_failure(code, stderr, "factory failed with a second line", out)
    assert "noise" not in stderr and "without handlers" not in stderr


def test_warnings_summarised_on_success_silent_with_quiet_shown_with_debug(tmp_path, capsys, noisy):
    base = ["partition", "--model-factory", f"{noisy}:make"]  # the factory warns; partition is quick
    code, _, stderr = run_cli([*base, "--out", str(tmp_path / "a.json")], capsys)
    assert code == 0, stderr
    notes = [line for line in stderr.splitlines() if "library warning" in line]
    assert len(notes) == 1 and notes[0].startswith("spectra: note: ") and "--debug" in notes[0]
    assert "transformers noise" not in stderr and "without handlers" not in stderr
    code, _, stderr = run_cli([*base, "--out", str(tmp_path / "b.json"), "--quiet"], capsys)
    assert code == 0 and "noise" not in stderr and "library warning" not in stderr
    with pytest.warns(UserWarning, match="python noise"):  # --debug leaves warnings to Python (and pytest)
        code, _, stderr = run_cli([*base, "--out", str(tmp_path / "c.json"), "--quiet", "--debug"], capsys)
    assert code == 0


@pytest.mark.parametrize(
    ("fn", "needle", "expected"), [("interrupt", "interrupted", 130), ("exits", "sys.exit(0)", 2)]
)
def test_interrupt_and_exit_from_user_code(tmp_path, capsys, noisy, fn, needle, expected):
    out = tmp_path / "out"
    code, _, stderr = run_cli(
        ["analyze", "--model-factory", f"{noisy}:{fn}", "--out", str(out), "--quiet"], capsys
    )
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert (
        code == expected
        and len(lines) == 1
        and lines[0].startswith("spectra: error: ")
        and needle in lines[0]
    )
    assert not out.exists()


def test_usage_errors_are_one_line(capsys):
    for args, needle in (
        (["weights", "--topk", "x"], "--topk"),
        (["weights", "--bogus"], "--bogus"),
        (["nope"], "nope"),
    ):
        code, _, stderr = run_cli(args, capsys)
        assert code == 2 and len(stderr.strip().splitlines()) == 1 and needle in stderr, stderr


SLOW_WRITE = """
import sys, time
from pathlib import Path
from hessian_spectra.weights import results
from hessian_spectra.cli.main import main
real = results.report_csv
def slow(report):
    Path(sys.argv[1]).write_text("staging")
    time.sleep(60)
    return real(report)
results.report_csv = slow
main(sys.argv[2:])
"""


@pytest.mark.parametrize(("sig", "expected"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_staging_is_one_line_and_leaves_previous_set(tmp_path, capsys, sig, expected):
    ck = cf.write_safetensors(cf.tiny_state_dict(), tmp_path / "m.safetensors")
    out = tmp_path / "out"
    assert run_cli(["weights", str(ck), "--out", str(out), "--quiet"], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    script, ready = tmp_path / "slow.py", tmp_path / "ready"
    script.write_text(SLOW_WRITE)
    args = [sys.executable, str(script), str(ready), "weights", str(ck), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not ready.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    stderr = proc.communicate(timeout=60)[1]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == expected and len(lines) == 1, stderr
    assert lines[0].startswith("spectra: error: weights: interrupted")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert np.all([not p.name.startswith(".spectra-stage") for p in out.iterdir()])
