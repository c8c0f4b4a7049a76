"""The clip threshold from measured updates: on a synthetic AdamW-style run with known per-step update
directions U_s, u recovers sigma_max(U_s) exactly for consecutive checkpoints (decay removed), is a lower
bound for checkpoints several steps apart, and c is the stated quantile; recommend() takes it."""

import numpy as np
import pytest
import torch
from hessian_spectra.analyses.advice.clip_series import UpdateSample, clip_from_updates
from hessian_spectra.analyses.advice.inputs import MatrixInput
from hessian_spectra.analyses.advice.recommendations import recommend
from hessian_spectra.analyses.track.run import TrackSettings, track_series
from hessian_spectra.checkpoints.series import discover_series
from hessian_spectra.errors import InputError
from support.ckpt_factory import write_safetensors

LR, WD = 0.01, 0.1


def _adamw_run(tmp_path, steps=6, save_every=1, seed=0):
    """W_{s+1} = (1 - lr wd) W_s - lr U_s for two matrices; checkpoints step_<s> every ``save_every``."""
    g = torch.Generator().manual_seed(seed)
    w = {"layers.0.mlp.fc1.weight": torch.randn(24, 16, generator=g, dtype=torch.float64),
         "layers.0.self_attn.o_proj.weight": torch.randn(16, 16, generator=g, dtype=torch.float64)}  # fmt: skip
    sig = {k: [] for k in w}
    write_safetensors(w, tmp_path / "step_0.safetensors")
    for s in range(1, steps + 1):
        for k in w:
            u = torch.randn(w[k].shape, generator=g, dtype=torch.float64) * (1 + s)  # growing updates
            sig[k].append(float(torch.linalg.matrix_norm(u, 2)))
            w[k] = (1 - LR * WD) * w[k] - LR * u
        if s % save_every == 0:
            write_safetensors(w, tmp_path / f"step_{s}.safetensors")
    return sig


def test_consecutive_checkpoints_recover_each_steps_update_norm(tmp_path):
    sig = _adamw_run(tmp_path)
    result = track_series(discover_series([tmp_path]), TrackSettings(lr=LR, weight_decay=WD))
    got = {}
    for iv in result.updates:
        assert iv["steps"] == 1 and iv["lr_sum"] == pytest.approx(LR)
        for m in iv["matrices"]:
            got.setdefault(m["name"], []).append(m["decayed_sigma_max"] / iv["lr_sum"])
    for name, exact in sig.items():
        np.testing.assert_allclose(got[name], exact, rtol=1e-9)
    groups = {g.group: g for g in result.clip.groups}
    assert groups["mlp"].c == pytest.approx(np.quantile(sig["layers.0.mlp.fc1.weight"], 0.9), rel=1e-9)
    assert groups["attention"].c == pytest.approx(
        np.quantile(sig["layers.0.self_attn.o_proj.weight"], 0.9), rel=1e-9
    )
    details = result.clip.details["mlp"]
    assert details["exact_per_step"] and details["decay_corrected"] and details["n_with_lr"] == 6
    assert details["share_clipped_by_paper_c"] == pytest.approx(
        np.mean(np.array(sig["layers.0.mlp.fc1.weight"]) > 5)
    )
    assert "0.9 quantile" in groups["mlp"].reason and "lower bound" not in groups["mlp"].reason


def test_intervals_of_several_steps_give_a_lower_bound(tmp_path):
    sig = _adamw_run(tmp_path, steps=6, save_every=3)
    result = track_series(discover_series([tmp_path]), TrackSettings(lr=LR, weight_decay=WD))
    for iv in result.updates[1:]:  # step_0 -> step_3 is 3 steps; step_3 -> step_6 too
        assert iv["steps"] == 3
        for m in iv["matrices"]:
            u = m["decayed_sigma_max"] / iv["lr_sum"]
            per_step = sig[m["name"]][iv["from_step"] : iv["to_step"]]
            assert u <= np.mean(per_step) * (1 + 1e-6)  # triangle inequality (decay is only first order)
    assert "lower bound" in result.clip.groups[0].reason and not result.clip.details["mlp"]["exact_per_step"]


def test_without_learning_rate_the_paper_default_stays_and_says_why():
    s = UpdateSample("a.mlp.fc1.weight", "mlp_up", (8, 4), 0, 10, 10, 0.5, None)
    clip = clip_from_updates([s], n_params=10**9)
    assert clip.groups[0].c == 10.0 and "no summed learning rate" in clip.groups[0].reason
    assert clip.details["mlp"]["per_step_sigma_max_median"] == pytest.approx(0.05)
    with pytest.raises(InputError, match="clip-quantile"):
        clip_from_updates([s], quantile=0.0)


def test_recommend_takes_the_measured_thresholds():
    rng = np.random.default_rng(0)
    items = [MatrixInput("l.0.mlp.fc1.weight", "mlp_up", (32, 16), np.sort(rng.random(16))[::-1] + 0.1),
             MatrixInput("l.0.attn.o_proj.weight", "attn_out", (16, 16), np.sort(rng.random(16))[::-1] + 0.1)]  # fmt: skip
    samples = [UpdateSample("l.0.mlp.fc1.weight", "mlp_up", (32, 16), 0, 1, 1, 0.3, 0.01)]
    measured = clip_from_updates(samples).groups
    recs = recommend(items, clip_thresholds=measured)
    c = {g.group: g for g in recs.clip_groups}
    assert c["mlp"].c == pytest.approx(30.0) and c["mlp"].reason.startswith("measured")
    assert c["attention"].c == 5.0 and c["attention"].n_matrices == 1  # not covered: the paper lookup
    assert all(r.c == 30.0 for r in recs.clip if r.group == "mlp")
