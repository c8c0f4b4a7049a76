"""A series of checkpoints from one training run, ordered by training step.

:func:`discover_series` takes the paths a user gives: several checkpoints (files or folders), or ONE
folder holding step-named checkpoints (``checkpoint-500/``, ``step_100.safetensors``, ``step-2000/``,
``global_step300``, ``iter_0100.pt``, Lightning's ``epoch=1-step=900.ckpt``). A checkpoint's step comes
from a Hugging Face Trainer ``trainer_state.json`` (``global_step``) when the folder has one, else from its
name; a disagreement between the two, a name with two different step numbers, a checkpoint without a
step, or two checkpoints at the same step make the order ambiguous and are refused with one line
(``order="given"`` takes the order as typed instead). Learning rates logged in ``trainer_state.json``
(``log_history``) are kept so update sizes can be put per step and per unit learning rate. Nothing here
reads tensor data: that is :func:`hessian_spectra.checkpoints.reader.open_checkpoint`'s job.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hessian_spectra.checkpoints.reader import SAFETENSORS_SUFFIXES, TORCH_SUFFIXES
from hessian_spectra.errors import InputError

__all__ = ["SeriesEntry", "CheckpointSeries", "discover_series", "step_from_name", "ORDERS"]

ORDERS = ("step", "given")
_STEP = re.compile(r"(?:^|[^a-z])(?:checkpoint|ckpt|global[_-]?step|step|iteration|iter)[-_=]?(\d+)", re.I)
_WEIGHT_SUFFIXES = SAFETENSORS_SUFFIXES + TORCH_SUFFIXES


@dataclass(frozen=True)
class SeriesEntry:
    """One checkpoint of the series: its path, training step and where the step came from."""

    path: Path
    step: int | None
    step_source: str  # "trainer_state.json", "name" or "given order"

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "step": self.step, "step_source": self.step_source}


@dataclass(frozen=True)
class CheckpointSeries:
    """Checkpoints in training order, with the learning rates the run logged (step, lr), if any."""

    entries: tuple[SeriesEntry, ...]
    order: str
    learning_rates: tuple[tuple[int, float], ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return len(self.entries)

    def steps_between(self, i: int) -> int | None:
        """Optimizer steps from entry ``i`` to ``i + 1`` (None when a step is unknown)."""
        a, b = self.entries[i].step, self.entries[i + 1].step
        return None if a is None or b is None else b - a

    def lr_sum(self, i: int) -> tuple[float | None, str]:
        """Sum of the learning rates of the steps from entry ``i`` to ``i + 1`` (steps a+1..b), from the
        logged (step, lr) points linearly interpolated, with a note; None when not covered by the log."""
        a, b = self.entries[i].step, self.entries[i + 1].step
        if a is None or b is None or not self.learning_rates:
            return None, "no learning rates logged"
        import numpy as np

        xs = [s for s, _ in self.learning_rates]
        if b < xs[0] or a + 1 > xs[-1]:
            return None, f"steps {a + 1}-{b} lie outside the logged learning rates (steps {xs[0]}-{xs[-1]})"

        steps = np.arange(a + 1, b + 1, dtype=np.float64)
        lrs = np.interp(steps, np.asarray(xs, float), np.asarray([v for _, v in self.learning_rates], float))
        clamped = bool(steps[0] < xs[0] or steps[-1] > xs[-1])
        note = "interpolated from trainer_state.json log_history" + (
            " (held constant beyond the logged range)" if clamped else ""
        )
        return float(lrs.sum()), note

    def to_dict(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "checkpoints": [e.to_dict() for e in self.entries],
            "learning_rates_logged": len(self.learning_rates),
            "notes": list(self.notes),
        }


def step_from_name(name: str) -> int | None:
    """The training step in a checkpoint's name (``checkpoint-500`` -> 500), None without one.

    Raises :class:`InputError` when the name carries two different step numbers."""
    found = {int(m.group(1)) for m in _STEP.finditer(name)}
    if len(found) > 1:
        raise InputError(name, f"ambiguous step: the name holds several step numbers {sorted(found)}")
    return found.pop() if found else None


def _trainer_state(path: Path) -> dict[str, Any] | None:
    state = path / "trainer_state.json" if path.is_dir() else None
    if state is None or not state.is_file():
        return None
    try:
        doc = json.loads(state.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(state, f"cannot parse trainer_state.json ({exc})") from None
    if not isinstance(doc, dict):
        raise InputError(state, "trainer_state.json is not a JSON object")
    return doc


def _entry(path: Path, order: str) -> tuple[SeriesEntry, dict[str, Any] | None]:
    if not path.exists():
        raise InputError(path, "no such file or directory")
    state = _trainer_state(path)
    named = step_from_name(path.stem if path.is_file() else path.name)
    if state is not None and isinstance(state.get("global_step"), int):
        step = int(state["global_step"])
        if named is not None and named != step:
            raise InputError(
                path, f"ambiguous step: the name says {named}, trainer_state.json global_step says {step}"
            )
        return SeriesEntry(path, step, "trainer_state.json"), state
    if named is not None:
        return SeriesEntry(path, named, "name"), state
    if order == "given":
        return SeriesEntry(path, None, "given order"), state
    raise InputError(
        path, "cannot tell its training step (no checkpoint-N / step_N / step-N in the name and no "
        "trainer_state.json): rename it, or pass --order given to use the order as typed",
    )  # fmt: skip


def _is_checkpoint_like(path: Path) -> bool:
    return path.is_dir() or path.suffix in _WEIGHT_SUFFIXES or path.name.endswith(".index.json")


def _expand_folder(folder: Path, notes: list[str]) -> list[Path]:
    """The step-named checkpoints inside a series folder (files or sub-folders), else []."""
    children = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    stepped = [
        p
        for p in children
        if _is_checkpoint_like(p) and step_from_name(p.stem if p.is_file() else p.name) is not None
    ]
    if stepped:
        others = [p.name for p in children if p not in stepped and _is_checkpoint_like(p)]
        if others:
            notes.append(
                f"{folder}: {len(others)} entries without a step in their name were left out "
                f"({', '.join(others[:4])}{' ...' if len(others) > 4 else ''})"
            )
    return stepped


def _learning_rates(states: Sequence[dict[str, Any]]) -> tuple[tuple[int, float], ...]:
    """(step, lr) from every trainer_state.json's log_history, merged by step (later files win)."""
    merged: dict[int, float] = {}
    for state in states:
        for rec in state.get("log_history") or []:
            if not isinstance(rec, dict):
                continue
            step, lr = rec.get("step"), rec.get("learning_rate")
            if isinstance(step, int) and isinstance(lr, int | float) and math.isfinite(lr):
                merged[step] = float(lr)
    return tuple(sorted(merged.items()))


def discover_series(paths: Sequence[str | Path], *, order: str = "step") -> CheckpointSeries:
    """The checkpoints of ``paths`` in training order (see the module docstring); at least two."""
    if order not in ORDERS:
        raise InputError("--order", f"must be one of {', '.join(ORDERS)}, got {order!r}")
    if not paths:
        raise InputError("PATH", "no checkpoints given")
    notes: list[str] = []
    items = [Path(p) for p in paths]
    if len(items) == 1:
        folder = items[0]
        if not folder.exists():
            raise InputError(folder, "no such file or directory")
        if not folder.is_dir():
            raise InputError(
                folder, "one checkpoint file is not a series: give two or more, or a folder of them"
            )
        items = _expand_folder(folder, notes)
        if not items:
            raise InputError(
                folder, "no step-named checkpoints inside (expected checkpoint-N, step_N or step-N folders "
                "or files); a series needs at least two checkpoints",
            )  # fmt: skip
    seen: dict[str, Path] = {}
    for p in items:
        key = str(p.resolve())
        if key in seen:
            raise InputError(p, "given twice")
        seen[key] = p
    found = [_entry(p, order) for p in items]
    entries = [e for e, _ in found]
    if len(entries) < 2:
        raise InputError(items[0], "a series needs at least two checkpoints (found one)")
    by_step: dict[int, Path] = {}
    for e in entries:
        if e.step is not None and e.step in by_step:
            raise InputError(e.path, f"ambiguous order: {by_step[e.step].name} is at the same step {e.step}")
        if e.step is not None:
            by_step[e.step] = e.path
    if order == "step":
        entries.sort(key=lambda e: e.step)  # type: ignore[arg-type, return-value]
    else:
        steps = [e.step for e in entries if e.step is not None]
        if steps != sorted(steps):
            notes.append("--order given: the order as typed differs from the steps in the names")
    states = [s for _, s in sorted(found, key=lambda t: t[0].step or 0) if s is not None]
    return CheckpointSeries(tuple(entries), order, _learning_rates(states), tuple(notes))
