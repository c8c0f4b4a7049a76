"""SharpnessTracker against exact answers: warm starts on a slowly changing quadratic (>= 3x fewer HVPs,
exact lambda_max every time), every tracked quantity against a dense float64 Hessian, the
edge-of-stability thresholds against torch's own optimizer steps, and a step that changes nothing."""

import json
import math

import pytest
import torch
from hessian_spectra.curvature.guards import model_state_hash, training_flags
from hessian_spectra.curvature.hessian import HessianOperator
from hessian_spectra.curvature.losses import cross_entropy
from hessian_spectra.curvature.stability import (
    PreconditionedOperator,
    adam_preconditioner,
    stability_reference,
)
from hessian_spectra.curvature.tracking import SharpnessTracker, head_of_batch
from hessian_spectra.errors import InputError
from hessian_spectra.krylov.lanczos import lanczos, start_vector
from hessian_spectra.krylov.linop import DenseOperator
from support.oracles import exact_hessian, planted_symmetric
from torch import nn


class Quadratic(nn.Module):
    """loss(theta) = theta^T A theta / 2 with A the batch: its Hessian is exactly A."""

    def __init__(self, n: int):
        super().__init__()
        self.theta = nn.Parameter(
            torch.randn(n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        )


def quad_loss(model, a):
    return 0.5 * model.theta @ (a @ model.theta)


def drifting_matrices(n=300, count=20, angle=1e-2, seed=0):
    """A(t) = Q_t diag(lam (1 + 0.01 t)) Q_t^T with Q_t rotated by exp(angle * S) per step (S skew)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = torch.rand(n, generator=g, dtype=torch.float64)
    lam[-2:] = torch.tensor([1.25, 1.5], dtype=torch.float64)
    s = torch.randn(n, n, generator=g, dtype=torch.float64)
    rot = torch.linalg.matrix_exp(angle * (s - s.T) / math.sqrt(n))
    out = []
    for t in range(count):
        out.append((q * (lam * (1 + 0.01 * t))) @ q.T)
        q = rot @ q
    return out


def test_warm_start_needs_3x_fewer_hvps_and_stays_exact():
    mats = drifting_matrices()
    model = Quadratic(mats[0].shape[0])
    hvps, errors = {}, {}
    for warm in (True, False):
        tracker = SharpnessTracker(quad_loss, every=1, warm_start=warm, max_steps=100)  # default tol 1e-3
        for t, a in enumerate(mats):
            rec = tracker.step(model, a, step=t)
            exact = float(torch.linalg.eigvalsh(a)[-1])
            assert rec.converged and rec.warm == (warm and t > 0)
            # a Ritz value is within its residual of an eigenvalue; here of the largest one
            assert abs(rec.lambda_max - exact) <= rec.lambda_max_residual + 1e-12
            errors.setdefault(warm, []).append(abs(rec.lambda_max - exact) / exact)
        hvps[warm] = sum(r.hvps for r in tracker.history[1:])  # step 0 is cold for both
        assert all(r.hvps == r.lanczos_steps for r in tracker.history)
    assert 3 * hvps[True] <= hvps[False], hvps
    assert max(errors[True]) < 1e-5 and max(errors[False]) < 1e-5


def test_start_vector_spans_the_subspace_and_default_path_is_unchanged():
    lam = torch.cat([torch.tensor([-1.0]), torch.linspace(0, 1, 58), torch.tensor([2.0])]).double()
    a = planted_symmetric(lam, seed=1)
    evecs = torch.linalg.eigh(a).eigenvectors
    sub = evecs[:, [-1, 0]].T  # top and bottom eigenvectors
    v = start_vector(sub)
    assert float(torch.linalg.vector_norm(v)) == pytest.approx(1.0, abs=1e-14)
    assert torch.allclose((evecs.T @ v)[[-1, 0]].abs(), torch.full((2,), 2**-0.5, dtype=torch.float64))
    near = sub + 1e-5 * torch.randn(
        sub.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    warm = lanczos(DenseOperator(a), 1, which="both", v0=near, tol=1e-8)
    cold = lanczos(DenseOperator(a), 1, which="both", tol=1e-8)
    assert warm.converged and cold.converged and 2 * warm.steps <= cold.steps, (warm.steps, cold.steps)
    assert warm.lambda_max == pytest.approx(2.0, abs=1e-10) and warm.lambda_min == pytest.approx(
        -1.0, abs=1e-10
    )
    noisy = start_vector(sub, noise=0.1, seed=4)
    assert float(torch.linalg.vector_norm(noisy - v)) == pytest.approx(0.1, rel=0.1)
    cold1 = lanczos(DenseOperator(a), 3, seed=5)
    cold2 = lanczos(DenseOperator(a), 3, seed=5, v0=None)
    assert cold1.alphas == cold2.alphas and cold1.betas == cold2.betas
    with pytest.raises(ValueError):
        start_vector(torch.zeros(2, 60))


def _mlp_setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(20, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (20,), generator=g))
    return model, batch


def test_every_tracked_quantity_equals_the_dense_hessian():
    model, batch = _mlp_setup()
    opt = torch.optim.Adam(model.parameters(), lr=0.05, betas=(0.8, 0.99))
    for _ in range(3):
        opt.zero_grad()
        cross_entropy(model, batch).backward()
        opt.step()
    dim = sum(p.numel() for p in model.parameters())
    tracker = SharpnessTracker(
        cross_entropy, batches=[batch], optimizer=opt, lambda_min=True, blocks="tensor", trace="hutch++",
        trace_matvecs=3 * dim + 3, tol=1e-10, max_steps=dim,
    )  # fmt: skip
    rec = tracker.measure(model, step=3)
    h = exact_hessian(model, [batch], cross_entropy)
    ev = torch.linalg.eigvalsh(h)
    assert rec.lambda_max == pytest.approx(float(ev[-1]), rel=1e-9)
    assert rec.lambda_min == pytest.approx(float(ev[0]), rel=1e-8, abs=1e-10)
    assert rec.trace == pytest.approx(float(torch.trace(h)), rel=1e-9)
    assert rec.loss == pytest.approx(float(cross_entropy(model, batch).detach()), rel=1e-12)
    a = 0
    for name, p in model.named_parameters():
        sl = slice(a, a + p.numel())
        a += p.numel()
        assert rec.block_lambda_max[name] == pytest.approx(
            float(torch.linalg.eigvalsh(h[sl, sl])[-1]), rel=1e-8
        )
    # Adam: P = (1 - beta1^t) diag(sqrt(v_hat) + eps) / lr; lambda_max(P^-1 H) from the dense matrices
    p_diag = adam_preconditioner(opt, list(model.parameters()))
    scaled = h / torch.sqrt(p_diag[:, None] * p_diag[None, :])
    assert rec.preconditioned_lambda_max == pytest.approx(float(torch.linalg.eigvalsh(scaled)[-1]), rel=1e-8)
    assert rec.reference.threshold == pytest.approx((2 + 2 * 0.8) / (1 - 0.8))
    assert rec.reference.two_over_lr == pytest.approx(2 / 0.05)


def test_adam_preconditioner_is_torchs_step():
    """torch's Adam moves theta by exactly -P^-1 m (m = exp_avg) with the documented P."""
    model, batch = _mlp_setup()
    for cls in (torch.optim.Adam, torch.optim.AdamW):
        opt = cls(model.parameters(), lr=0.01, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.0)
        for _ in range(4):
            opt.zero_grad()
            cross_entropy(model, batch).backward()
            before = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
            opt.step()
        after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        m = torch.cat([opt.state[p]["exp_avg"].reshape(-1) for p in model.parameters()])
        p_diag = adam_preconditioner(opt, list(model.parameters()))
        torch.testing.assert_close(after - before, -m / p_diag, rtol=1e-9, atol=1e-15)


def _stable(opt_cls, curvature, **kw):
    """Run torch's optimizer on loss = a x^2 / 2 for 400 steps: did |x| shrink?"""
    x = nn.Parameter(torch.ones(1, dtype=torch.float64))
    opt = opt_cls([x], **kw)
    for _ in range(400):
        opt.zero_grad()
        (0.5 * curvature * x * x).sum().backward()
        opt.step()
    return abs(float(x)) < 1.0


@pytest.mark.parametrize(
    "kw",
    [dict(lr=0.1), dict(lr=0.1, momentum=0.9), dict(lr=0.1, momentum=0.5, dampening=0.3),
     dict(lr=0.1, momentum=0.9, nesterov=True)],
)  # fmt: skip
def test_sgd_thresholds_are_where_torchs_sgd_turns_unstable(kw):
    x = nn.Parameter(torch.ones(1))
    ref = stability_reference(torch.optim.SGD([x], **kw))
    assert ref.on == "lambda_max" and ref.two_over_lr == pytest.approx(2 / kw["lr"])
    assert _stable(torch.optim.SGD, 0.98 * ref.threshold, **kw)
    assert not _stable(torch.optim.SGD, 1.02 * ref.threshold, **kw)


def test_preconditioned_operator_and_reference_without_optimizer():
    a = planted_symmetric(torch.linspace(0.1, 3, 20, dtype=torch.float64), seed=2)
    d = torch.linspace(0.5, 4, 20, dtype=torch.float64)
    op = PreconditionedOperator(DenseOperator(a), d)
    res = lanczos(op, 1, which="largest", tol=1e-12)
    assert res.lambda_max == pytest.approx(float(torch.linalg.eigvals(a / d[:, None]).real.max()), rel=1e-10)
    assert stability_reference(None, 0.5).threshold == pytest.approx(4.0)
    assert stability_reference(None, None).threshold is None
    with pytest.raises(InputError):
        PreconditionedOperator(DenseOperator(a), -d)


class Noisy(nn.Module):
    """Dropout and BatchNorm in train mode: a tracker step must leave flags, buffers and RNG alone."""

    def __init__(self):
        super().__init__()
        self.lin, self.bn, self.drop, self.out = (
            nn.Linear(4, 8),
            nn.BatchNorm1d(8),
            nn.Dropout(0.5),
            nn.Linear(8, 3),
        )

    def forward(self, x):
        return self.out(self.drop(torch.relu(self.bn(self.lin(x)))))


def test_a_tracker_step_changes_nothing(tmp_path):
    torch.manual_seed(0)
    model = Noisy()
    model.train()
    model.out.eval()  # mixed flags must come back exactly
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    cross_entropy(model, (x, y)).backward()
    opt.step()
    grads = [p.grad.clone() for p in model.parameters()]
    state, flags = model_state_hash(model), training_flags(model)
    rng = torch.get_rng_state()
    log = tmp_path / "s.jsonl"
    tracker = SharpnessTracker(cross_entropy, every=2, optimizer=opt, lambda_min=True, trace="hutchinson",
                               blocks="tensor", jsonl=log)  # fmt: skip
    assert tracker.step(model, (x, y), step=1) is None
    rec = tracker.step(model, (x, y), step=2)
    assert rec is not None and rec.preconditioned_lambda_max is not None
    assert model_state_hash(model) == state and training_flags(model) == flags
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    line = json.loads(log.read_text().splitlines()[0])
    assert line["step"] == 2 and line["lambda_max"] == pytest.approx(rec.lambda_max)
    assert line["reference"]["optimizer"] == "AdamW"
    assert (
        line["settings"]["seed"] == 0 and line["settings"]["tol"] == 1e-3 and line["settings"]["every"] == 2
    )
    assert set(rec.log_values()) >= {"sharpness/lambda_max", "sharpness/two_over_lr", "sharpness/threshold"}


def test_tracker_options_and_bad_input(tmp_path):
    model, batch = _mlp_setup()
    small = head_of_batch(batch, 5)
    assert small[0].shape[0] == 5 and small[1].shape[0] == 5
    tracker = SharpnessTracker(cross_entropy, max_examples=5)
    rec = tracker.measure(model, batch)
    direct = lanczos(HessianOperator(model, [small], cross_entropy), 1, which="largest", tol=1e-12)
    assert rec.lambda_max == pytest.approx(direct.lambda_max, rel=1e-3)
    with pytest.raises(InputError, match="no batch"):
        SharpnessTracker(cross_entropy).measure(model)
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")  # a diverged run: recorded, not raised
    bad = SharpnessTracker(cross_entropy, jsonl=tmp_path / "nan.jsonl").measure(model, batch, step=7)
    assert math.isnan(bad.lambda_max) and not bad.converged and "not measured" in bad.notes[0]
    assert json.loads((tmp_path / "nan.jsonl").read_text())["lambda_max"] is None
    for kw in (dict(every=0), dict(trace="bogus"), dict(blocks="layer"), dict(tol=2.0), dict(noise=-1.0)):
        with pytest.raises(InputError):
            SharpnessTracker(cross_entropy, **kw)
