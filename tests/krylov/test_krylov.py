"""Lanczos against planted spectra (Q diag(lam) Q^T in float64) and torch.linalg.eigvalsh."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from hessian_spectra.errors import ConvergenceWarning
from hessian_spectra.krylov.lanczos import (
    block_seed,
    default_max_steps,
    lanczos,
    lanczos_lockstep,
    lanczos_tridiagonal,
)
from hessian_spectra.krylov.linop import DenseBlockOperator, DenseOperator
from hessian_spectra.krylov.result import LanczosResult
from support.oracles import planted_symmetric as planted

RNG = np.random.default_rng(0)
SPECTRA = {
    "spread": np.concatenate([RNG.uniform(-1, 1, 390), [5, 7, 10, 20, 50], [-3, -4, -6, -8, -9]]),
    "clustered": np.concatenate([RNG.uniform(0, 1, 390), 10 + 1e-3 * np.arange(5), -2 - 1e-3 * np.arange(5)]),
    "indefinite": np.concatenate(
        [RNG.uniform(-0.5, 0.5, 390), [1.0, 0.95, 0.9, 0.8, 0.7], [-0.98, -0.93, -0.85, -0.75, -0.72]]
    ),
    "repeated": np.concatenate([RNG.uniform(0, 1, 390), [5, 5, 5, 4, 4], [-1, -1, -2, -2, -2]]),
    "mlp_like": np.concatenate(
        [
            RNG.exponential(0.01, 385) * RNG.choice([-1, 1], 385, p=[0.3, 0.7]),
            RNG.uniform(1, 10, 10),
            [-0.5, -0.45, -0.4, -0.3, -0.2],
        ]
    ),
}


def exact(a: torch.Tensor) -> np.ndarray:
    return torch.linalg.eigvalsh(a.to(torch.float64)).numpy()


@pytest.mark.parametrize("name", sorted(SPECTRA))
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-8), (torch.float32, 1e-5)])
def test_top_and_bottom_five_match_eigvalsh(name, dtype, rtol):
    a = planted(SPECTRA[name], seed=1, dtype=dtype)
    ev = exact(a)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        res = lanczos(DenseOperator(a), 5)
    assert res.converged
    assert res.steps < a.shape[0]  # it stopped by residuals, not by exhausting the space
    np.testing.assert_allclose(res.top, ev[::-1][:5], rtol=rtol, atol=0)
    np.testing.assert_allclose(res.bottom, ev[:5], rtol=rtol, atol=0)
    assert res.lambda_max == res.top[0] and res.lambda_min == res.bottom[0]
    assert list(res.top) == sorted(res.top, reverse=True) and list(res.bottom) == sorted(res.bottom)
    assert res.num_matvecs == res.steps and len(res.alphas) == res.steps


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_residuals_bound_the_distance_to_the_spectrum(dtype):
    a = planted(SPECTRA["clustered"], seed=2, dtype=dtype)
    ev = exact(a)
    # stop early (unconverged) so the residuals are large enough to be tested as bounds
    with pytest.warns(ConvergenceWarning):
        res = lanczos(DenseOperator(a), 5, max_steps=12, return_vectors=True)
    assert not res.converged
    for theta, r in zip(res.top + res.bottom, res.top_residuals + res.bottom_residuals, strict=True):
        assert np.min(np.abs(ev - theta)) <= r * (1 + 1e-6) + 1e-12
    # the reported residual is the true residual ||A y - theta y|| of the returned Ritz vector
    a64 = a.to(torch.float64)
    for theta, r, y in zip(res.top, res.top_residuals, res.top_vectors, strict=True):
        y = y.to(torch.float64)
        true = float(torch.linalg.vector_norm(a64 @ y - theta * y))
        assert true == pytest.approx(r, rel=1e-3, abs=1e-5 * abs(theta) if dtype == torch.float32 else 1e-12)


def test_dim_smaller_than_budget_is_exact():
    for n in (1, 2, 3, 7, 12):
        lam = np.linspace(-1.0, 2.0, n)
        res = lanczos(DenseOperator(planted(lam, seed=n)), 5)
        assert res.converged and res.exhausted and res.steps == n
        kk = min(5, n)
        np.testing.assert_allclose(res.top, lam[::-1][:kk], atol=1e-13)
        np.testing.assert_allclose(res.bottom, lam[:kk], atol=1e-13)


def test_invariant_subspaces_with_multiplicities_are_exact():
    # A diagonal matrix: the Krylov space of one vector closes after 4 steps (4 distinct values);
    # restarts must recover every copy of the repeated eigenvalues.
    lam = [3.0, 3, 3, 1, 1, 1, 0, 0, -2, -2]
    res = lanczos(DenseOperator(torch.diag(torch.tensor(lam, dtype=torch.float64))), 5)
    assert res.converged
    np.testing.assert_allclose(res.top, [3, 3, 3, 1, 1], atol=1e-13)
    np.testing.assert_allclose(res.bottom, [-2, -2, 0, 0, 1], atol=1e-13)
    # large dim, two eigenvalues of multiplicity 100: stops long before dim, values exact
    a = torch.diag(torch.tensor([3.0] * 100 + [1.0] * 100, dtype=torch.float64))
    res = lanczos(DenseOperator(a), 3)
    assert res.converged and res.steps < 20
    np.testing.assert_allclose(res.top, [3, 3, 3], atol=1e-13)
    np.testing.assert_allclose(res.bottom, [1, 1, 1], atol=1e-13)
    # low rank: rank 4 in dim 300, bottom-5 are five zeros (near-invariant Krylov space after 5 steps)
    for seed in (0, 1, 5):
        u = planted(np.r_[[4.0, 3, 2, 1], np.zeros(296)], seed=seed)
        res = lanczos(DenseOperator(u), 5)
        assert res.converged
        np.testing.assert_allclose(res.top, [4, 3, 2, 1, 0], atol=1e-12)
        np.testing.assert_allclose(res.bottom, [0] * 5, atol=1e-12)


def test_which_largest_and_smallest():
    a = planted(SPECTRA["spread"], seed=3)
    ev = exact(a)
    hi = lanczos(DenseOperator(a), 3, which="largest")
    lo = lanczos(DenseOperator(a), 3, which="smallest")
    assert hi.bottom == () and hi.lambda_min is None and lo.top == () and lo.lambda_max is None
    np.testing.assert_allclose(hi.top, ev[::-1][:3], rtol=1e-8)
    np.testing.assert_allclose(lo.bottom, ev[:3], rtol=1e-8)


def test_unconverged_warns_and_flags():
    a = planted(SPECTRA["clustered"], seed=4)
    with pytest.warns(ConvergenceWarning, match="max_steps"):
        res = lanczos(DenseOperator(a), 5, max_steps=8)
    assert not res.converged and res.steps == 8


def test_same_seed_bit_identical_and_v0():
    a = planted(SPECTRA["indefinite"], seed=5)
    r1 = lanczos(DenseOperator(a), 4, seed=7)
    r2 = lanczos(DenseOperator(a), 4, seed=7)
    assert r1.alphas == r2.alphas and r1.betas == r2.betas and r1.top == r2.top
    v0 = torch.ones(a.shape[0], dtype=torch.float64)
    r3 = lanczos(DenseOperator(a), 4, v0=v0)
    assert r3.alphas[0] == pytest.approx(float(v0 @ a @ v0) / a.shape[0], rel=1e-12)


def test_to_dict_is_json_and_progress_called():
    calls = []
    res = lanczos(DenseOperator(planted(SPECTRA["spread"])), 2, progress=lambda s, m: calls.append((s, m)))
    d = res.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["lambda_max"] == res.lambda_max and "top_vectors" not in d
    assert [c[0] for c in calls] == list(range(1, res.steps + 1))
    assert isinstance(res, LanczosResult)


def test_default_budget():
    assert default_max_steps(10, 5) == 10
    assert default_max_steps(10_000, 5) == 150
    assert default_max_steps(10_000, 100) == 400


def test_tridiagonal_matches_dense_projection():
    a = planted(SPECTRA["spread"], seed=6)
    v0 = torch.randn(a.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    al, be, q = lanczos_tridiagonal(DenseOperator(a), 15, v0=v0, return_basis=True)
    t = np.diag(al) + np.diag(be, 1) + np.diag(be, -1)
    np.testing.assert_allclose((q @ a @ q.T).numpy(), t, atol=1e-12)
    np.testing.assert_allclose((q @ q.T).numpy(), np.eye(15), atol=1e-13)
    al2, be2, none = lanczos_tridiagonal(DenseOperator(a), 15, v0=v0, reorthogonalize=False)
    assert none is None and al2.shape == (15,) and be2.shape == (14,)
    np.testing.assert_allclose(al2[:5], al[:5], rtol=1e-10)


def test_lockstep_equals_sequential_and_counts_calls():
    mats = [
        planted(SPECTRA["spread"][-150:], seed=1),
        planted(SPECTRA["clustered"][-90:], seed=2),
        planted([2.0, 1, -1], seed=3),
    ]
    mop = DenseBlockOperator(mats, names=["a", "b", "c"])
    res = lanczos_lockstep(mop, 3, seed=11)
    for b, m in enumerate(mats):
        ref = lanczos(DenseOperator(m), 3, seed=block_seed(11, b))
        assert res[b].alphas == ref.alphas and res[b].top == ref.top and res[b].bottom == ref.bottom
        assert res[b].converged and res[b].num_matvecs == ref.num_matvecs
        np.testing.assert_allclose(res[b].top, exact(m)[::-1][:3], rtol=1e-8)
    assert mop.num_matvecs == max(r.steps for r in res)
    # a block's result does not depend on which other blocks are present
    alone = lanczos_lockstep(DenseBlockOperator(mats[:1]), 3, seed=11)
    assert alone[0].alphas == res[0].alphas


def test_bad_arguments():
    op = DenseOperator(torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError):
        lanczos(op, 0)
    with pytest.raises(ValueError):
        lanczos(op, 2, which="top")
    with pytest.raises(ValueError):
        lanczos(op, 2, v0=torch.zeros(3))
    bad = DenseOperator(torch.full((3, 3), float("nan"), dtype=torch.float64))
    with pytest.raises(FloatingPointError):
        lanczos(bad, 1)


# ---------------------------------------------------------------- partial reorthogonalisation (PRO)
@pytest.mark.parametrize("name", sorted(SPECTRA))
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_partial_matches_full_with_far_fewer_reorthogonalisations(name, dtype, rtol):
    a = planted(SPECTRA[name], seed=1, dtype=dtype)
    ev = exact(a)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        full = lanczos(DenseOperator(a), 5, reorthogonalize="full")
        part = lanczos(DenseOperator(a), 5, reorthogonalize="partial")
    assert full.converged and part.converged
    np.testing.assert_allclose(part.top, full.top, rtol=rtol, atol=0)
    np.testing.assert_allclose(part.bottom, full.bottom, rtol=rtol, atol=0)
    # and both against the exact spectrum (the residual bound stays honest with a semi-orthogonal basis)
    np.testing.assert_allclose(part.top, ev[::-1][:5], rtol=10 * rtol, atol=0)
    np.testing.assert_allclose(part.bottom, ev[:5], rtol=10 * rtol, atol=0)
    for theta, r in zip(part.top + part.bottom, part.top_residuals + part.bottom_residuals, strict=True):
        slack = (1e-13 if dtype == torch.float64 else 1e-6) * np.abs(ev).max()  # O(eps ||A||), as documented
        assert np.min(np.abs(ev - theta)) <= r + slack
    assert full.num_reorth == full.steps and full.reorthogonalize == "full"
    assert part.reorthogonalize == "partial" and 0 < part.num_reorth <= 0.6 * part.steps
    d = part.to_dict()
    assert d["num_reorth"] == part.num_reorth and d["reorthogonalize"] == "partial"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_partial_keeps_the_basis_semi_orthogonal(dtype):
    # long fixed-length runs (many converged Ritz pairs: where plain Lanczos loses orthogonality fast)
    eps = torch.finfo(dtype).eps
    for name in ("spread", "mlp_like", "clustered"):
        a = planted(SPECTRA[name], seed=4, dtype=dtype)
        v0 = torch.randn(a.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        op = DenseOperator(a)
        al, be, q = lanczos_tridiagonal(op, 150, v0=v0, reorthogonalize="partial", return_basis=True)
        q = q.to(torch.float64)
        loss = float((q @ q.T - torch.eye(q.shape[0], dtype=torch.float64)).abs().max())
        assert loss < eps**0.5, (name, loss)
        # Ritz values of the partial run equal those of the fully reorthogonalised one at the extremes
        t_part = np.linalg.eigvalsh(np.diag(al) + np.diag(be, 1) + np.diag(be, -1))
        alf, bef, _ = lanczos_tridiagonal(op, 150, v0=v0, reorthogonalize="full")
        t_full = np.linalg.eigvalsh(np.diag(alf) + np.diag(bef, 1) + np.diag(bef, -1))
        scale = np.abs(t_full).max()
        tol = 1e-10 if dtype == torch.float64 else 1e-5
        np.testing.assert_allclose(t_part[-5:], t_full[-5:], atol=tol * scale)
        np.testing.assert_allclose(t_part[:5], t_full[:5], atol=tol * scale)


def test_plain_lanczos_loses_orthogonality_where_partial_does_not():
    # the counterfactual the previous test relies on: without reorthogonalisation |Q^T Q - I| is O(1)
    a = planted(SPECTRA["spread"], seed=4)
    v0 = torch.randn(a.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    chain_q = lanczos_tridiagonal(DenseOperator(a), 150, v0=v0, reorthogonalize="partial", return_basis=True)[
        2
    ]
    assert float((chain_q @ chain_q.T - torch.eye(chain_q.shape[0], dtype=torch.float64)).abs().max()) < 1e-7
    al, be, _ = lanczos_tridiagonal(DenseOperator(a), 150, v0=v0, reorthogonalize=False)
    t = np.linalg.eigvalsh(np.diag(al) + np.diag(be, 1) + np.diag(be, -1))
    assert np.sum(np.abs(t - 50.0) < 1e-8) >= 2  # ghost copies of lambda_max = 50: orthogonality was lost


def test_reorthogonalize_policy_is_validated_and_lockstep_accepts_it():
    op = DenseOperator(torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError):
        lanczos(op, 1, reorthogonalize="sometimes")
    mats = [planted(SPECTRA["spread"][-150:], seed=1), planted([2.0, 1, -1], seed=3)]
    for pol in ("full", "partial"):
        res = lanczos_lockstep(DenseBlockOperator(mats), 3, seed=5, reorthogonalize=pol)
        for b, m in enumerate(mats):
            ref = lanczos(DenseOperator(m), 3, seed=block_seed(5, b), reorthogonalize=pol)
            assert res[b].alphas == ref.alphas and res[b].num_reorth == ref.num_reorth
            np.testing.assert_allclose(res[b].top, exact(m)[::-1][:3], rtol=1e-10)


class _Float32Inside(DenseOperator):
    """A float64 operator whose matvec runs in float32 (like a float64 model with float32 kernels)."""

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self._count += 1
        return (self.matrix.to(torch.float32) @ v.to(torch.float32)).to(torch.float64)


def test_partial_measures_operator_rounding_coarser_than_its_dtype():
    # eps64-level bookkeeping alone would miss float32 rounding and let orthogonality go; the measured
    # local term keeps the basis semi-orthogonal at float64's sqrt(eps)
    a = planted(SPECTRA["spread"], seed=4)
    op = _Float32Inside(a)
    v0 = torch.randn(a.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    q = lanczos_tridiagonal(op, 120, v0=v0, reorthogonalize="partial", return_basis=True)[2]
    assert float((q @ q.T - torch.eye(q.shape[0], dtype=torch.float64)).abs().max()) < 1.5e-8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        full = lanczos(op, 5, tol=1e-6, reorthogonalize="full")
        part = lanczos(op, 5, tol=1e-6, reorthogonalize="partial")
    np.testing.assert_allclose(part.top, full.top, rtol=1e-6)
    np.testing.assert_allclose(part.bottom, full.bottom, rtol=1e-6)


# ---------------------------------------------------------------- the step's vector work (float32, long vectors)
def test_step_reductions_keep_float64_accuracy_on_long_float32_vectors():
    # all-positive terms are the hard case for accumulation in float32 (a BLAS sdot measured 9e-7 relative
    # here); the blocked sums feeding alpha and beta must stay within ~1e-8 of the float64 answer. The
    # length is no multiple of either block size, so the tails are reduced too.
    from hessian_spectra.krylov.chain import _Chain

    n = 3_000_001
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, generator=g) + 0.5
    y = torch.rand(n, generator=g) + 0.5
    chain = _Chain(n, torch.float32, torch.device("cpu"), torch.ones(n), max_steps=2, reorthogonalize=False)
    dot = float(x.double() @ y.double())
    sq = float(x.double() @ x.double())
    assert abs(float(chain._dot(x, y)) - dot) <= 1e-8 * dot
    assert abs(float(chain._dot(x, x)) - sq) <= 1e-8 * sq
    assert chain._dot(x, y).dtype == torch.float64


class _Diagonal:
    """diag(d) as a LinearOperator (long vectors without a dense matrix)."""

    def __init__(self, d: torch.Tensor):
        self.d, self.dim, self.dtype, self.device, self._count = d, d.numel(), d.dtype, d.device, 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self._count += 1
        return self.d * v

    @property
    def num_matvecs(self) -> int:
        return self._count


@pytest.mark.parametrize("policy", ["partial", "full"])
def test_float32_lanczos_on_long_vectors_matches_the_exact_extremes(policy):
    # 600,001 entries (no multiple of the reduction blocks: their tails are non-empty); the extremes must
    # come out to the float32 accuracy the issue asks for, with either reorthogonalisation policy
    g = torch.Generator().manual_seed(3)
    d = torch.rand(600_001, generator=g, dtype=torch.float64)
    d[:5] = torch.tensor([3.0, 2.5, 2.2, -1.5, -1.2], dtype=torch.float64)
    d = d.to(torch.float32)
    ev = np.sort(d.double().numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        res = lanczos(_Diagonal(d), 2, reorthogonalize=policy)
    assert res.converged and res.steps < 100
    np.testing.assert_allclose(res.top, ev[::-1][:2], rtol=1e-5)
    np.testing.assert_allclose(res.bottom, ev[:2], rtol=1e-5)


def test_float32_restarts_recover_multiplicities():
    # the breakdown/restart path with a float32 basis: the random restart vector is projected in float32
    lam = [3.0, 3, 3, 1, 1, 1, 0, 0, -2, -2]
    res = lanczos(DenseOperator(torch.diag(torch.tensor(lam, dtype=torch.float32))), 5)
    assert res.converged and res.exhausted
    np.testing.assert_allclose(res.top, [3, 3, 3, 1, 1], atol=1e-5)
    np.testing.assert_allclose(res.bottom, [-2, -2, 0, 0, 1], atol=1e-5)


class _ReturnsItsInput(DenseOperator):
    """The identity, returning the very tensor it was given (the chain must not alias its work row)."""

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self._count += 1
        return v


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matvec_returning_its_input_is_safe(dtype):
    res = lanczos(_ReturnsItsInput(torch.eye(6, dtype=dtype)), 2)
    assert res.converged
    np.testing.assert_allclose(res.top + res.bottom, [1.0] * 4, atol=1e-6)
