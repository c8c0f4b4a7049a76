"""Issue 3 end to end: the Hessian engine's eigenvalues, densities and traces on real models against
exact float64 answers (dense Hessian / GGN from tests/oracles.py, ``torch.linalg.eigvalsh``).

Each test goes model -> operator -> solver and compares with the dense oracle; none reuses the code
path it checks. Every call is also checked to leave the model's weights, buffers, train/eval flags and
attention backend as they were, and every seeded call to be reproducible bit for bit.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hessian_spectra.curvature.block_builders import parameter_blocks, qkv_blocks
from hessian_spectra.curvature.block_operators import BlockDiagonalOperator
from hessian_spectra.curvature.ggn import GGNOperator, output_and_target
from hessian_spectra.curvature.guards import model_state_hash, training_flags
from hessian_spectra.curvature.hessian import HessianOperator
from hessian_spectra.curvature.losses import mse
from hessian_spectra.errors import ConvergenceWarning
from hessian_spectra.krylov.lanczos import block_seed, lanczos, lanczos_lockstep
from hessian_spectra.krylov.linop import DenseOperator
from hessian_spectra.krylov.power import power_iteration
from hessian_spectra.krylov.slq import density_l1, exact_density, slq, slq_lockstep
from hessian_spectra.krylov.trace import hutchinson, hutchpp
from support.models import GGN_CASES, get_case
from support.oracles import case_hessian, exact_ggn, exact_hessian
from torch import nn


def _state(model: nn.Module) -> tuple:
    """Everything a call must not change: weights + buffers (hash), train/eval flags, HF attention."""
    cfg = getattr(model, "config", None)
    return (
        model_state_hash(model),
        training_flags(model),
        getattr(cfg, "_attn_implementation", None),
    )


def _op(name: str, dtype=torch.float64, **kw) -> HessianOperator:
    c = get_case(name)
    return HessianOperator(c.model, c.batches, c.loss, dtype=dtype, weighting=c.weights, **kw)


def _exact_eigs(name: str) -> np.ndarray:
    return torch.linalg.eigvalsh(case_hessian(name)).numpy()


def _rel(got, want) -> float:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return float(np.max(np.abs(got - want) / np.abs(want)))


def _check_extremes(res, ev: np.ndarray, k: int, tol: float) -> None:
    """top-k / bottom-k Ritz values vs exact eigenvalues, each to ``tol`` relative to itself; and each
    reported residual really bounds the error (up to rounding of the operator)."""
    top, bottom = ev[::-1][:k], ev[:k]
    assert _rel(res.top, top) < tol, (res.top, top)
    assert _rel(res.bottom, bottom) < tol, (res.bottom, bottom)
    slack = tol * float(np.max(np.abs(ev)))
    assert np.all(np.abs(np.array(res.top) - top) <= np.array(res.top_residuals) + slack)
    assert np.all(np.abs(np.array(res.bottom) - bottom) <= np.array(res.bottom_residuals) + slack)


# ------------------------------------------------------------------------------ extreme eigenvalues
F64_CASES = ["mlp", "cnn-bn", "sdpa-lm", "gpt2"]


@pytest.mark.parametrize("name", F64_CASES)
def test_lanczos_top_and_bottom_5_float64(name):
    c = get_case(name)
    ev = _exact_eigs(name)
    before = _state(c.model)
    op = _op(name)
    res = lanczos(op, 5, which="both", seed=0)
    assert res.converged and not res.exhausted
    assert res.steps < op.dim  # found by Krylov convergence, not by exhausting the space
    _check_extremes(res, ev, 5, 1e-8)
    assert res.num_matvecs == op.num_matvecs == res.steps
    assert _state(c.model) == before


def test_lanczos_llama_float64_is_limited_by_float32_rmsnorm():
    """HF LlamaRMSNorm computes in float32 (``hidden_states.to(torch.float32)``) even in a float64 model,
    so a float64 operator cannot beat float32 rounding there: the achievable tolerance is ~1e-7, and the
    operator says so in its notes. Asserted at 1e-6 (measured 8e-8 for top-5 and bottom-5)."""
    c = get_case("llama")
    ev = _exact_eigs("llama")
    before = _state(c.model)
    op = _op("llama")
    res = lanczos(op, 5, which="both", seed=0)
    assert res.converged
    _check_extremes(res, ev, 5, 1e-6)
    assert any("float32" in n for n in op.notes), op.notes
    assert _state(c.model) == before


@pytest.mark.parametrize("name", [*F64_CASES, "llama"])
def test_lanczos_top_and_bottom_5_float32(name):
    c = get_case(name)
    ev = _exact_eigs(name)
    before = _state(c.model)
    res = lanczos(_op(name, dtype=torch.float32), 5, which="both", seed=0)
    assert res.converged
    _check_extremes(res, ev, 5, 1e-5)
    assert _state(c.model) == before


# ------------------------------------------------------------------------------ indefinite at init
def _indefinite_at_init(target_scale: float):
    """A default-init tanh MLP regression whose targets are large enough that the residual term makes
    the Hessian strongly indefinite: |lambda_min| / lambda_max = 0.987 (scale 4) or 1.045 (scale 5)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 12), nn.Tanh(), nn.Linear(12, 2))
    g = torch.Generator().manual_seed(100)
    x = torch.randn(16, 4, generator=g)
    y = torch.randn(16, 2, generator=g) * target_scale
    return model, [(x, y)]


@pytest.mark.parametrize("scale", [4.0, 5.0])
def test_indefinite_at_init_lanczos_gets_lambda_max(scale):
    model, batches = _indefinite_at_init(scale)
    ev = torch.linalg.eigvalsh(exact_hessian(model, batches, mse)).numpy()
    lmin, lmax = float(ev[0]), float(ev[-1])
    assert 0.95 < abs(lmin) / lmax < 1.1  # the hard regime the test is about
    before = _state(model)
    op = HessianOperator(model, batches, mse, dtype=torch.float64)
    # lambda_max is close to the next eigenvalue here, so the default 40-step budget is too short for
    # tol 1e-10; give it the whole dimension and check it stops well before exhausting the space
    res = lanczos(op, 1, which="largest", seed=0, max_steps=op.dim)
    assert res.converged and not res.exhausted and res.steps < op.dim
    assert abs(res.lambda_max - lmax) <= 1e-8 * lmax

    # power iteration (hessian_spectra.krylov.power's documented behaviour): it targets the largest |lambda|.
    if abs(lmin) > lmax:  # converges - to lambda_min, which PyHessian would call "the top eigenvalue"
        pw = power_iteration(op, max_iter=2000, tol=1e-6, seed=0)
        assert pw.converged
        assert abs(pw.eigenvalue - lmin) <= 1e-5 * abs(lmin)
        assert pw.num_matvecs > 5 * res.num_matvecs
    else:  # |lambda_min| ~ lambda_max: no convergence in a PyHessian-sized budget, and it says so
        with pytest.warns(ConvergenceWarning, match="largest"):
            pw = power_iteration(op, max_iter=100, tol=1e-6, seed=0)
        assert not pw.converged
        assert pw.residual > 1e-6 * abs(pw.eigenvalue)
    assert _state(model) == before


# ------------------------------------------------------------------------------ SLQ density
# The density is compared at the library's default kernel width (hessian_spectra.krylov.slq.default_sigma_fraction:
# max(1%, 1/(2m)) of the Ritz range, 1/60 at m = 30 steps), the exact density smoothed with the same kernel.
# At a fixed 1% the 30-node quadrature shows through: L1 0.09 (measured; 100 probes: 0.07).


def test_slq_density_matches_exact_eigen_density_mlp():
    c = get_case("mlp")
    ev = _exact_eigs("mlp")
    before = _state(c.model)
    op = _op("mlp")
    res = slq(op, num_probes=10, steps=30, seed=0)
    assert res.num_matvecs == op.num_matvecs == 300
    dens = res.density()  # default kernel and grid (the Ritz values +- 6 sigma)
    assert dens.sigma == pytest.approx((res.ritz_max - res.ritz_min) / 60)
    exact = exact_density(ev, dens.grid, dens.sigma)  # same kernel, same grid
    assert abs(dens.integral() - 1) < 1e-6 and abs(exact.integral() - 1) < 1e-6
    l1 = density_l1(dens, exact)
    assert l1 <= 0.05, l1
    # the same probes on the dense matrix give the same quadrature: the error above is SLQ's, not the HVP's
    dense = slq(DenseOperator(case_hessian("mlp")), num_probes=10, steps=30, seed=0)
    np.testing.assert_allclose(res.nodes, dense.nodes, rtol=0, atol=1e-10)
    np.testing.assert_allclose(res.weights, dense.weights, rtol=0, atol=1e-10)
    # and the bound is typical, not a lucky seed: median over 10 seeds (dense, same algorithm)
    l1s = []
    for seed in range(10):
        r = slq(DenseOperator(case_hessian("mlp")), num_probes=10, steps=30, seed=seed)
        d = r.density()
        l1s.append(density_l1(d, exact_density(ev, d.grid, d.sigma)))
    assert float(np.median(l1s)) <= 0.05, l1s
    assert _state(c.model) == before


# ------------------------------------------------------------------------------ traces
@pytest.mark.parametrize("name", ["mlp", "sdpa-lm"])
def test_trace_estimators_within_3_standard_errors(name):
    c = get_case(name)
    exact = float(np.sum(_exact_eigs(name)))
    before = _state(c.model)
    op = _op(name)
    estimates = [
        hutchinson(op, num_probes=50, seed=0),
        hutchpp(op, num_matvecs=60, seed=0),
    ]
    s = slq(op, num_probes=10, steps=20, seed=0)
    for est in estimates:
        assert est.stderr > 0
        assert abs(est.value - exact) <= 3 * est.stderr, (est.method, est.value, exact, est.stderr)
    assert s.trace_stderr > 0
    assert abs(s.trace - exact) <= 3 * s.trace_stderr, (s.trace, exact, s.trace_stderr)
    assert op.num_matvecs == 50 + 60 + int(sum(s.steps_taken))
    assert _state(c.model) == before


# ------------------------------------------------------------------------------ blocks
def _exact_block(op: HessianOperator, H: torch.Tensor, block) -> torch.Tensor:
    pos = op.take(block, torch.arange(op.dim, dtype=torch.float64)).long()
    return H[pos][:, pos]


@pytest.mark.parametrize("name", ["mlp", "gpt2"])
def test_block_lockstep_lanczos_and_slq_equal_exact_diagonal_blocks(name):
    c = get_case(name)
    H = case_hessian(name)
    before = _state(c.model)
    op = _op(name)
    blocks = parameter_blocks(op)
    if name == "gpt2":  # Q/K/V parts of GPT-2's fused Conv1D (in, 3*out) projection
        blocks += qkv_blocks(op, "transformer.h.0.attn.c_attn.weight", axis=1)
    bd = BlockDiagonalOperator(op, blocks)
    exact = [torch.linalg.eigvalsh(_exact_block(op, H, b)).numpy() for b in blocks]

    k = 3
    results = lanczos_lockstep(bd, k, which="both", seed=0)
    for b, res, ev in zip(blocks, results, exact, strict=True):
        kk = min(k, b.numel)
        assert res.converged, b.name
        scale = float(np.max(np.abs(ev)))
        assert np.max(np.abs(np.array(res.top) - ev[::-1][:kk])) <= 1e-8 * scale, b.name
        assert np.max(np.abs(np.array(res.bottom) - ev[:kk])) <= 1e-8 * scale, b.name

    steps = 12
    dens = slq_lockstep(bd, num_probes=3, steps=steps, seed=1)
    for i, (b, r, ev) in enumerate(zip(blocks, dens, exact, strict=True)):
        # per block, identical to SLQ on the exact dense diagonal block with the block's own seed
        ref = slq(DenseOperator(_exact_block(op, H, b)), num_probes=3, steps=steps, seed=block_seed(1, i))
        scale = float(np.max(np.abs(ev)))
        np.testing.assert_allclose(r.nodes, ref.nodes, rtol=0, atol=1e-9 * scale, err_msg=b.name)
        np.testing.assert_allclose(r.weights, ref.weights, rtol=0, atol=1e-8, err_msg=b.name)
        if b.numel <= steps:  # Krylov space exhausted: the quadrature nodes ARE the block's eigenvalues
            used = r.nodes[r.weights > 1e-12]
            assert np.min(np.abs(used[:, None] - ev[None, :]), axis=1).max() <= 1e-9 * scale, b.name
    assert _state(c.model) == before


# ------------------------------------------------------------------------------ no mutation, determinism
@pytest.mark.parametrize("name", ["cnn-bn", "gpt2"])
def test_every_call_leaves_model_unchanged_and_is_bitwise_reproducible(name):
    """cnn-bn is in train mode (BatchNorm + Dropout); gpt2 uses SDPA attention with dropout."""
    c = get_case(name)
    before = _state(c.model)
    if name == "cnn-bn":
        assert c.model.training

    def run_all():
        op = _op(name)
        out = {}
        calls = {
            "lanczos": lambda: lanczos(op, 3, seed=7).alphas,
            "slq": lambda: tuple(slq(op, num_probes=2, steps=8, seed=7).nodes.ravel()),
            "hutchinson": lambda: hutchinson(op, num_probes=4, seed=7).value,
            "hutchpp": lambda: hutchpp(op, num_matvecs=6, seed=7).value,
            "power": lambda: power_iteration(op, max_iter=5, seed=7).eigenvalue,
            "gradient": lambda: tuple(op.gradient().tolist()),
            "blocks": lambda: tuple(
                r.alphas for r in lanczos_lockstep(op.block_diagonal(), 2, max_steps=6, seed=7)
            ),
        }
        for key, call in calls.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                out[key] = call()
            assert _state(c.model) == before, f"{key} changed the model"
        return out

    first, second = run_all(), run_all()
    assert first == second  # exact equality of every float: bit for bit
    other = lanczos(_op(name), 3, seed=8).alphas
    assert other != first["lanczos"]  # the seed matters, so the equality above is not vacuous


# ------------------------------------------------------------------------------ GGN


@pytest.mark.parametrize("name,loss", GGN_CASES)
def test_ggn_top_eigenvalues_match_dense_ggn(name, loss):
    c = get_case(name)
    before = _state(c.model)
    op = GGNOperator(c.model, c.batches, loss, dtype=torch.float64, weighting=c.weights)
    shift = name == "gpt2"

    def fwd(m, b):
        return output_and_target(m, b, loss=loss, shift=shift)

    G = exact_ggn(c.model, c.batches, fwd, op.output_loss, weights=c.weights)
    ev = torch.linalg.eigvalsh(G).numpy()
    res = lanczos(op, 5, which="largest", seed=0)
    assert res.converged
    assert _rel(res.top, ev[::-1][:5]) < 1e-8, (res.top, ev[::-1][:5])
    assert float(ev[0]) > -1e-10 * float(ev[-1])  # PSD, unlike the Hessian
    assert _state(c.model) == before
