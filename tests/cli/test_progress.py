"""Progress that tells the truth: plain periodic lines off a terminal, per-phase ETAs, --quiet silent."""

from __future__ import annotations

import io

from hessian_spectra.cli.progress import PhaseClock, PlainLines, format_seconds


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_format_seconds():
    assert [format_seconds(x) for x in (None, 0.4, 59.4, 75.2, 3725)] == ["?", "0s", "59s", "1m15s", "1h02m"]


def test_phase_eta_uses_the_phase_own_step_times():
    clock = FakeClock()
    state = PhaseClock(clock)
    assert state.update(0, 10, "Lanczos") and state.eta is None
    clock.t += 4.0
    state.update(4, 10, "Lanczos")
    assert state.eta == 6.0  # 1 s per step, 6 steps left
    clock.t += 20.0  # a new phase of 20 s steps: its ETA is not polluted by the 1 s steps before
    assert state.update(1, 3, "block SLQ") is True
    clock.t += 20.0
    state.update(2, 3, "block SLQ")
    assert state.eta == 20.0


def test_plain_lines_every_interval_with_phase_and_closing_line():
    clock, out = FakeClock(), io.StringIO()
    lines = PlainLines("gpt", out, unit="steps", phased=True, interval=10.0, clock=clock)
    for i in range(1, 31):  # 30 steps of 1 s: lines at 10 s and 20 s, then a closing line
        clock.t += 1.0
        lines(i, 30, "SLQ")
    clock.t += 1.0
    lines(1, 2, "block SLQ")  # short phase: no line of its own
    lines(0, 0, "done")
    lines.close()
    got = out.getvalue().splitlines()
    assert got == [
        "spectra: gpt: SLQ 10/30 steps, 10s elapsed, ETA 20s",
        "spectra: gpt: SLQ 20/30 steps, 20s elapsed, ETA 10s",
        "spectra: gpt: SLQ 30/30 steps, 30s elapsed, done",
    ]


def test_plain_lines_unphased_keep_one_title():
    clock, out = FakeClock(), io.StringIO()
    lines = PlainLines("weights", out, unit="tensors", phased=False, interval=5.0, clock=clock)
    for i, name in enumerate(["a", "b\x1b[2J", "c"], 1):
        clock.t += 3.0
        lines(i, 3, name)
    assert out.getvalue() == "spectra: weights: 2/3 tensors, 6s elapsed, ETA 3s\n"  # no tensor names in lines


def test_cli_progress_lines_when_stderr_is_a_file(monkeypatch):
    """A probe run through the CLI wrapper with stderr redirected prints plain lines (interval 0 here),
    names each phase once per line ("hessian: Lanczos", never "hessian hessian"); --quiet prints none."""
    import hessian_spectra.cli.progress as P
    from hessian_spectra.analyses.report.analyze import AnalyzeOptions
    from hessian_spectra.cli.analyze_cmd import run_analysis
    from hessian_spectra.curvature.probe import HessianSettings
    from support.models import mlp_case

    monkeypatch.setattr(P, "LINE_INTERVAL", 0.0)
    case = mlp_case()
    settings = HessianSettings(top_k=1, probes=2, steps=5, block_probes=2, block_steps=4, seed=0, exact=False)
    options = AnalyzeOptions(weights=False, structure=False, recommendations=False)
    for quiet in (False, True):
        err = io.StringIO()
        monkeypatch.setattr("sys.stderr", err)
        run_analysis(case.model, case.batches, case.loss, settings, options, source="t", quiet=quiet,
                     label="hessian", kind="hessian")  # fmt: skip
        text = err.getvalue()
        if quiet:
            assert text == ""
            continue
        progress = [line for line in text.splitlines() if line.startswith("spectra: hessian: ")]
        phases = {line.split(": ")[2].rsplit(" ", 1)[0].split(" ")[0] for line in progress}
        assert {"Lanczos", "SLQ", "block"} <= phases, text
        assert "hessian hessian" not in text
        assert all("elapsed" in line for line in progress)
        assert any(line.endswith(", done") for line in progress)


def test_rich_bars_one_bar_per_phase_each_ending_at_its_own_count():
    from hessian_spectra.cli.progress import RichBars

    class Recorder:
        def __init__(self) -> None:
            self.tasks: dict[int, dict] = {}

        def add_task(self, description, total=None, **fields):
            self.tasks[len(self.tasks)] = {"description": description, "total": total, **fields}
            return len(self.tasks) - 1

        def update(self, task, **fields):
            self.tasks[task].update(fields)

    rec = Recorder()
    bars = RichBars(rec, "gpt", phased=True)
    for i in range(1, 5):  # Lanczos converged after 4 of at most 10 HVPs
        bars(i, 10, "Lanczos")
    for i in range(1, 3):
        bars(i, 3, "block SLQ")
    bars(0, 0, "done")
    got = [(t["description"], t["completed"], t["total"]) for t in rec.tasks.values()]
    assert got == [("gpt: Lanczos", 4, 4), ("gpt: block SLQ", 2, 2)]
