"""BatchNorm running statistics (and every other buffer) never change when the tool runs a model (#14).

A BN model left in train mode, with non-trivial running statistics; each public entry point that runs it
must leave every buffer's bytes (running_mean, running_var, num_batches_tracked) as they were, with
``eval_mode=False`` too. With ``eval_mode=False`` the curvature is that of train-mode BN (batch
statistics): checked against a dense Hessian of the same train-mode function.
"""

from __future__ import annotations

import hashlib
import sys

import pytest
import torch
from hessian_spectra.curvature.block_builders import parameter_blocks
from hessian_spectra.curvature.guards import BufferKeeper, frozen_buffers, model_state_hash, training_flags
from hessian_spectra.curvature.hessian import HessianOperator
from hessian_spectra.curvature.probe import HessianSettings, run_hessian
from support.models import cnn_case
from torch import nn


def buffer_hashes(model: nn.Module) -> dict[str, str]:
    return {
        name: hashlib.sha256(
            b.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
        ).hexdigest()
        for name, b in model.named_buffers()
    }


@pytest.fixture
def bn():
    case = cnn_case()  # a fresh model: the cached zoo case must not be mutated
    case.model.double()
    case.model.drop.p = 0.0  # train mode with a deterministic function: batch-statistics BN only
    batches = [(x.double(), y) for x, y in case.batches]
    before = buffer_hashes(case.model)
    assert {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"} <= set(before)
    assert case.model.training
    return case.model, batches, case.loss, before


@pytest.mark.parametrize("eval_mode", [True, False])
def test_operator_entry_points_leave_buffers(bn, eval_mode):
    model, batches, loss, before = bn
    flags, state = training_flags(model), model_state_hash(model)
    op = HessianOperator(model, batches, loss, eval_mode=eval_mode)
    v = torch.randn(op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    op.matvec(v)
    op.matmat(torch.stack([v, -v], 1))
    op.gradient()
    blocks = parameter_blocks(op)
    op.block_diagonal(blocks).matvec_many([op.take(b, v) for b in blocks])
    assert buffer_hashes(model) == before
    assert training_flags(model) == flags and model_state_hash(model) == state


def test_train_mode_curvature_is_the_batch_statistics_hessian(bn):
    """eval_mode=False: H v equals the dense Hessian of the train-mode (batch-statistics) loss."""
    model, batches, loss, before = bn
    x, y = batches[0]
    op = HessianOperator(model, [batches[0]], loss, eval_mode=False)
    names = op.param_names
    params = dict(model.named_parameters())
    flat = torch.cat([params[n].detach().reshape(-1) for n in names])

    def f(theta):
        out, i = {}, 0
        for n in names:
            k = params[n].numel()
            out[n] = theta[i : i + k].view_as(params[n])
            i += k
        with frozen_buffers(model):
            return loss(lambda inp: torch.func.functional_call(model, out, (inp,)), (x, y))

    dense = torch.autograd.functional.hessian(f, flat)
    v = torch.randn(op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(op.matvec(v), dense @ v, rtol=1e-10, atol=1e-12)
    assert buffer_hashes(model) == before


def test_run_hessian_leaves_buffers(bn):
    model, batches, loss, before = bn
    run_hessian(
        model, batches, loss, HessianSettings(top_k=1, probes=2, steps=6, block_probes=1, block_steps=4)
    )
    assert buffer_hashes(model) == before and model.training


def test_cli_analyze_path_leaves_buffers(tmp_path, capsys):
    from support.cli import run_cli

    factory = tmp_path / "bn_factory.py"
    factory.write_text(
        "import sys\n"
        "from support.models import cnn_case\n"
        "def make():\n"
        "    case = cnn_case()\n"
        "    case.model.drop.p = 0.0\n"
        "    sys.modules['support'].LAST_MODEL = case.model\n"
        "    return case.model, case.loss, case.batches\n"
    )
    out = tmp_path / "out"
    args = ["analyze", "--model-factory", f"{factory}:make", "--out", str(out), "--quiet", "--probes", "2",
            "--steps", "6", "--block-probes", "1", "--block-steps", "4", "--top-k", "1", "--no-structure"]  # fmt: skip
    reference = cnn_case().model  # the same seeded model, built apart and never run by the tool
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    model = sys.modules["support"].LAST_MODEL
    assert model is not reference and buffer_hashes(reference)["bn.num_batches_tracked"]
    assert buffer_hashes(model) == buffer_hashes(reference) and model.training


def test_buffer_keeper_restores_any_buffer_a_forward_writes():
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("calls", torch.zeros((), dtype=torch.long))
            self.register_buffer("cache", torch.zeros(3))
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            self.calls += 1
            self.cache = x.detach().mean(0)  # re-assigned, not written in place
            return self.lin(x)

    m = Counter()
    keeper = BufferKeeper(m)
    before = buffer_hashes(m)
    old_cache = m.cache
    for _ in range(2):
        with keeper():
            m(torch.randn(4, 3))
    assert buffer_hashes(m) == before and m.cache is old_cache
    m.calls += 5  # a change the user makes between two uses is kept, not reverted
    with keeper():
        m(torch.randn(4, 3))
    assert int(m.calls) == 5
