"""Checkpoint series: steps from names and trainer_state.json, ordering, learning rates, and every
ambiguous or bad input refused with one InputError naming the path."""

import json

import pytest
from hessian_spectra.checkpoints.series import discover_series, step_from_name
from hessian_spectra.errors import InputError
from support.ckpt_factory import tiny_state_dict, write_hf_dir, write_safetensors


@pytest.mark.parametrize(
    "name,step",
    [("checkpoint-500", 500), ("step_100", 100), ("step-2000", 2000), ("global_step300", 300),
     ("iter_0100", 100), ("epoch=1-step=900", 900), ("model-ckpt-42", 42), ("final", None),
     ("steps", None), ("mystep_3", None), ("run7-checkpoint-10", 10)],
)  # fmt: skip
def test_step_from_name(name, step):
    assert step_from_name(name) == step


def test_two_step_numbers_in_a_name_are_ambiguous():
    with pytest.raises(InputError, match="several step numbers"):
        step_from_name("checkpoint-10-step-20")


def _trainer_folder(root, step, lrs=()):
    folder = write_hf_dir(tiny_state_dict(step), root / f"checkpoint-{step}")
    history = [{"step": s, "learning_rate": lr, "loss": 1.0} for s, lr in lrs]
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": history}))
    return folder


def test_folder_of_trainer_checkpoints_is_ordered_numerically(tmp_path):
    lrs = [(s, 1e-3 * (1 - s / 1000)) for s in range(10, 1001, 10)]
    for step in (1000, 200, 50):  # lexical order would put 1000 before 200
        _trainer_folder(tmp_path, step, [x for x in lrs if x[0] <= step])
    (tmp_path / "runs").mkdir()  # TensorBoard folder: not a checkpoint, no step
    write_safetensors(tiny_state_dict(9), tmp_path / "model.safetensors")  # final weights in the root
    series = discover_series([tmp_path])
    assert [e.step for e in series.entries] == [50, 200, 1000]
    assert {e.step_source for e in series.entries} == {"trainer_state.json"}
    assert series.steps_between(0) == 150
    assert any("left out" in n and "model.safetensors" in n for n in series.notes)
    total, note = series.lr_sum(0)  # steps 51..200 of a linear decay logged every 10 steps
    exact = sum(1e-3 * (1 - s / 1000) for s in range(51, 201))
    assert total == pytest.approx(exact, rel=1e-12) and "interpolated" in note


def test_explicit_files_sorted_by_step_or_kept_as_given(tmp_path):
    files = [
        write_safetensors(tiny_state_dict(i), tmp_path / f"step_{s}.safetensors")
        for i, s in enumerate((30, 10, 20))
    ]
    assert [e.step for e in discover_series(files).entries] == [10, 20, 30]
    given = discover_series(files, order="given")
    assert [e.step for e in given.entries] == [30, 10, 20] and given.notes
    plain = [write_safetensors(tiny_state_dict(i), tmp_path / f"w{i}.safetensors") for i in range(2)]
    assert [e.step_source for e in discover_series(plain, order="given").entries] == ["given order"] * 2
    assert discover_series(plain, order="given").lr_sum(0) == (None, "no learning rates logged")


@pytest.mark.parametrize("case", ["no_step", "duplicate", "disagree", "one", "missing", "empty_folder",
                                  "single_file", "same_path", "bad_state", "bad_order"])  # fmt: skip
def test_ambiguous_or_bad_series_is_refused(tmp_path, case):
    a = write_safetensors(tiny_state_dict(0), tmp_path / "step_1.safetensors")
    if case == "no_step":
        args, match = (
            [a, write_safetensors(tiny_state_dict(1), tmp_path / "final.safetensors")],
            "cannot tell",
        )
    elif case == "duplicate":
        args, match = [a, write_hf_dir(tiny_state_dict(1), tmp_path / "checkpoint-1")], "same step 1"
    elif case == "disagree":
        folder = _trainer_folder(tmp_path, 5)
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": 6}))
        args, match = [a, folder], "trainer_state.json global_step says 6"
    elif case == "one":
        (tmp_path / "only").mkdir()
        write_hf_dir(tiny_state_dict(0), tmp_path / "only" / "checkpoint-3")
        args, match = [tmp_path / "only"], "at least two"
    elif case == "missing":
        args, match = [a, tmp_path / "step_9"], "no such file"
    elif case == "empty_folder":
        (tmp_path / "empty").mkdir()
        args, match = [tmp_path / "empty"], "no step-named checkpoints"
    elif case == "single_file":
        args, match = [a], "one checkpoint file is not a series"
    elif case == "same_path":
        args, match = [a, a], "given twice"
    elif case == "bad_state":
        folder = write_hf_dir(tiny_state_dict(1), tmp_path / "checkpoint-2")
        (folder / "trainer_state.json").write_text("{not json")
        args, match = [a, folder], "cannot parse trainer_state.json"
    else:
        with pytest.raises(InputError, match="--order"):
            discover_series([a], order="time")
        return
    with pytest.raises(InputError, match=match):
        discover_series(args)
