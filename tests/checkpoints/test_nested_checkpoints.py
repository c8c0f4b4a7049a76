"""Training checkpoints as researchers save them: weights at any depth, wrapper prefixes, EMA copies and
optimizer state beside the weights. The weights report of a wrapped checkpoint equals the flat one's."""

from __future__ import annotations

import pytest
import torch
from hessian_spectra.checkpoints.optimizer_state import map_parameters
from hessian_spectra.checkpoints.reader import open_checkpoint
from hessian_spectra.errors import InputError
from hessian_spectra.weights.plan import WeightsSettings
from hessian_spectra.weights.probe import analyze_weights
from support import ckpt_factory as cf


class _Net(torch.nn.Module):
    """Linear layers, a BatchNorm (buffers between parameters) and a conv: the usual training-script model."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(3, 8, 3)
        self.bn = torch.nn.BatchNorm1d(8)
        self.fc1 = torch.nn.Linear(8 * 6, 16)
        self.fc2 = torch.nn.Linear(16, 5)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(self.bn(self.conv(x)).flatten(1))))


def _trained(steps: int = 3, named: bool = False):
    torch.manual_seed(0)
    net = _Net()
    params = list(net.named_parameters()) if named else net.parameters()
    opt = torch.optim.Adam(params, lr=1e-2, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(4, 3, 8, generator=g), torch.randint(0, 5, (4,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net, opt


def _comparable(report) -> dict:
    """Everything but provenance, file names and where each tensor sat in the file."""
    d = report.to_dict()
    inv = [
        {k: v for k, v in r.items() if k not in ("key", "storage")}
        for r in d["inventory"]
        if r["kind"] != "optimizer_state"
    ]
    return {"settings": d["settings"], "summary": d["summary"], "matrices": d["matrices"], "inventory": inv}


def test_speaker_encoder_layout_step_model_state_optimizer_state(tmp_path):
    """The issue's case: {step, model_state, optimizer_state} was 'empty checkpoint'; now the same report."""
    net, opt = _trained()
    flat = cf.write_safetensors(net.state_dict(), tmp_path / "flat.safetensors")
    wrapped = tmp_path / "ckpt.pt"
    torch.save({"step": 3, "model_state": net.state_dict(), "optimizer_state": opt.state_dict()}, wrapped)
    with open_checkpoint(wrapped) as ckpt:
        assert ckpt.names() == open_checkpoint(flat).names()
        assert ckpt.meta("fc1.weight").key == "model_state/fc1.weight"
        assert any("nested entry 'model_state'" in n for n in ckpt.notes)
        extras = ckpt.extras()
        assert extras and all(m.skip.startswith("optimizer state") for m in extras)
        assert {m.name.rsplit("/", 1)[-1] for m in extras} == {"step", "exp_avg", "exp_avg_sq"}
    a, b = analyze_weights(flat), analyze_weights(wrapped)
    assert _comparable(a) == _comparable(b)
    listed = [r for r in b.inventory if r.kind == "optimizer_state"]
    assert len(listed) == 3 * len(list(net.parameters())) and all(r.status == "skipped" for r in listed)


@pytest.mark.parametrize("legacy", [False, True])
def test_dataparallel_and_compile_prefixes_removed_with_original_keys(tmp_path, legacy):
    net, _ = _trained(steps=1)
    dp = torch.nn.DataParallel(net)  # no GPU needed: the wrapper alone adds "module."
    # torch.compile(net).state_dict() names are "_orig_mod." + name (spelled out: importing dynamo costs ~5 s)
    compiled = {f"_orig_mod.{k}": v for k, v in net.state_dict().items()}
    for label, sd, prefix in (
        ("dp", dp.state_dict(), "module."),
        ("compiled", compiled, "_orig_mod."),
    ):
        path = tmp_path / f"{label}.pt"
        torch.save({"state_dict": sd, "epoch": 2}, path, _use_new_zipfile_serialization=not legacy)
        with open_checkpoint(path) as ckpt:
            assert ckpt.names() == open_checkpoint(net).names(), label
            assert ckpt.meta("fc2.bias").key == f"state_dict/{prefix}fc2.bias"
            assert any(f"'{prefix}'" in n for n in ckpt.notes), ckpt.notes
            assert torch.equal(ckpt.load("fc2.weight"), net.fc2.weight.detach())
            assert any("legacy" in n for n in ckpt.notes) == legacy


def test_lightning_checkpoint_model_prefix_removed_only_when_it_is_a_wrapper(tmp_path):
    net, opt = _trained(steps=1)
    sd = {f"model.{k}": v for k, v in net.state_dict().items()}
    lightning = tmp_path / "epoch=0.ckpt"
    torch.save({"epoch": 0, "global_step": 1, "pytorch-lightning_version": "2.4.0", "state_dict": sd,
                "optimizer_states": [opt.state_dict()], "lr_schedulers": []}, lightning)  # fmt: skip
    with open_checkpoint(lightning) as ckpt:
        assert "fc1.weight" in ckpt and ckpt.meta("fc1.weight").key == "state_dict/model.fc1.weight"
        assert len(ckpt.extras()) == 3 * len(list(net.parameters()))
    # a flat file whose names all start with "model." (a HF checkpoint with tied head): names kept
    flat = tmp_path / "pytorch_model.bin"
    torch.save(sd, flat)
    with open_checkpoint(flat) as ckpt:
        assert "model.fc1.weight" in ckpt and ckpt.meta("model.fc1.weight").key is None
        assert not any("prefix" in n for n in ckpt.notes)


def test_ema_copy_beside_the_model_is_passed_over_with_a_note_and_selectable(tmp_path):
    net, opt = _trained(steps=1)
    ema = {k: v * 0.5 if v.is_floating_point() else v for k, v in net.state_dict().items()}
    path = tmp_path / "train.pth"
    torch.save({"ema": ema, "model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": 7}, path)
    with open_checkpoint(path) as ckpt:
        assert torch.equal(ckpt.load("fc1.weight"), net.fc1.weight.detach())
        assert any("entry 'ema'" in n and "not analysed" in n for n in ckpt.notes)
    with open_checkpoint(path, entry="ema") as ckpt:
        assert torch.equal(ckpt.load("fc1.weight"), net.fc1.weight.detach() * 0.5)
        assert ckpt.meta("fc1.weight").key == "ema/fc1.weight"
    with pytest.raises(InputError, match="no nested entry 'swa'"):
        open_checkpoint(path, entry="swa")


def test_parts_of_one_model_in_nested_dicts_are_flattened(tmp_path):
    g = torch.Generator().manual_seed(0)
    enc, dec = torch.randn(6, 4, generator=g), torch.randn(4, 6, generator=g)
    path = tmp_path / "nested.pt"
    torch.save({"model": {"encoder": {"proj": enc}, "decoder": {"proj": dec}}, "iteration": 9}, path)
    with open_checkpoint(path) as ckpt:
        assert ckpt.names() == ["decoder.proj", "encoder.proj"]
        assert ckpt.meta("encoder.proj").key == "model/encoder.proj"
        assert torch.equal(ckpt.load("decoder.proj"), dec)


def test_checkpoint_holding_only_optimizer_state_is_empty(tmp_path):
    _, opt = _trained(steps=1)
    path = tmp_path / "opt.pt"
    torch.save({"optimizer": opt.state_dict(), "epoch": 1}, path)
    with pytest.raises(InputError, match="empty checkpoint"):
        open_checkpoint(path)


# ------------------------------------------------------------------------------ optimizer parameter names


def test_adam_second_moments_mapped_to_names_through_buffers(tmp_path):
    """BatchNorm buffers sit between parameters in the state dict: the order-and-shape match skips them,
    and the reported moments are v / (1 - beta2^t) of the right tensors."""
    net, opt = _trained(steps=4)
    path = tmp_path / "ckpt.pt"
    torch.save({"model_state": net.state_dict(), "optimizer_state": opt.state_dict()}, path)
    report = analyze_weights(path, WeightsSettings(optimizer_state=True))
    (entry,) = report.optimizer_state["optimizers"]
    assert entry["mapping"] == "order" and "buffers excluded by name (2 of them)" in entry["mapping_note"]
    by_name = {r["name"]: r for r in entry["parameters"]}
    assert set(by_name) == {n for n, _ in net.named_parameters()}
    for name, p in net.named_parameters():
        v = opt.state[p]["exp_avg_sq"].double()
        corr = 1 - 0.99**4
        assert by_name[name]["v_mean"] == pytest.approx(float(v.mean()) / corr, rel=1e-12)
        assert by_name[name]["v_max"] == pytest.approx(float(v.max()) / corr, rel=1e-12)
        assert by_name[name]["bias_corrected"] and by_name[name]["step"] == 4.0
    assert analyze_weights(path).optimizer_state is None  # only on request


def test_parameter_names_stored_by_the_optimizer_are_used(tmp_path):
    net, opt = _trained(steps=1, named=True)
    sd = opt.state_dict()
    if "param_names" not in sd["param_groups"][0]:
        pytest.skip("this torch does not store param_names")
    pmap = map_parameters(sd, dict(net.state_dict()))
    assert pmap.method == "param_names"
    assert list(pmap.names.values()) == [n for n, _ in net.named_parameters()]


def test_unique_shape_match_skips_an_unnamed_buffer():
    """A buffer with an unknown name but a shape no parameter has: the only assignment is found."""
    a, buf, b = torch.ones(3, 3), torch.ones(7), torch.ones(2, 3)
    opt = {"state": {0: {"exp_avg_sq": a}, 1: {"exp_avg_sq": b}}, "param_groups": [{"params": [0, 1]}]}
    pmap = map_parameters(opt, {"a": a, "mask_table": buf, "b": b})
    assert pmap.method == "order and shape" and pmap.names == {0: "a", 1: "b"}


def test_ambiguous_order_is_not_mapped_and_says_so():
    """Two same-shape parameters and one same-shape buffer: more than one assignment fits, so none is made."""
    w = torch.ones(3, 3)
    weights = {"a": w, "buf": w, "b": w}
    opt = {
        "state": {0: {"exp_avg_sq": w}, 1: {"exp_avg_sq": w}},
        "param_groups": [{"params": [0, 1], "betas": (0.9, 0.999)}],
    }
    pmap = map_parameters(opt, weights)
    assert pmap.method == "none" and pmap.names == {} and "exactly one way" in pmap.note
