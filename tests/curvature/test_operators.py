"""HessianOperator / GGNOperator against dense float64 oracles on the tiny model zoo."""

from __future__ import annotations

import pytest
import torch
from hessian_spectra.curvature.ggn import GGNOperator, output_and_target
from hessian_spectra.curvature.guards import model_state_hash, training_flags
from hessian_spectra.curvature.hessian import HessianOperator
from hessian_spectra.curvature.losses import causal_lm_loss, cross_entropy, mse
from hessian_spectra.errors import InputError
from hessian_spectra.krylov.linop import LinearOperator
from support.models import GGN_CASES, get_case, random_vector
from support.oracles import case_hessian, exact_ggn, exact_hessian, rel_err
from torch.nn.attention import SDPBackend

CASES = ["mlp", "mlp-mse", "cnn-bn", "sdpa-lm", "encoder-layer", "indefinite", "gpt2", "llama"]
EXACT_MODES = ["reuse", "recompute", "fwd_rev"]
# Llama's RMSNorm upcasts to float32 even in a float64 model: its float64 results agree to ~1e-7 only.
F64_TOL = {"llama": 1e-5}
FD_TOL = {"llama": 5e-2}


def _snapshot(model):
    return model_state_hash(model), training_flags(model)


def _sdp_flags():
    b = torch.backends.cuda
    return (b.flash_sdp_enabled(), b.mem_efficient_sdp_enabled(), b.math_sdp_enabled())


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("mode", [*EXACT_MODES, "finite_difference"])
def test_float64_matvec_matches_dense_hessian(name, mode):
    c = get_case(name)
    H = case_hessian(name)
    before = _snapshot(c.model)
    flags = _sdp_flags()
    op = HessianOperator(c.model, c.batches, c.loss, mode=mode, dtype=torch.float64, weighting=c.weights)
    assert isinstance(op, LinearOperator)
    assert op.dim == H.shape[0]
    for seed in (0, 1):
        v = random_vector(op.dim, seed)
        hv = op.matvec(v)
        tol = FD_TOL.get(name, 1e-6) if mode == "finite_difference" else F64_TOL.get(name, 1e-10)
        assert rel_err(hv, H @ v) < tol, (name, mode, rel_err(hv, H @ v))
    assert op.num_matvecs == 2 and op.num_hvps == 2
    assert op.num_batch_hvps == 2 * len(c.batches)
    assert _snapshot(c.model) == before, "weights or train/eval flags changed"
    assert _sdp_flags() == flags


@pytest.mark.parametrize("name", ["mlp", "cnn-bn", "sdpa-lm", "encoder-layer", "gpt2"])
def test_float32_operator_close_to_float64_truth(name):
    c = get_case(name)
    H = case_hessian(name)
    op = HessianOperator(c.model, c.batches, c.loss, weighting=c.weights)
    assert op.dtype == torch.float32
    v = random_vector(op.dim, 3)
    hv = op.matvec(v.float()).double()
    # HF's own loss runs in float32 here too; 1e-5 relative is the float32 budget for these sizes
    assert rel_err(hv, H @ v) < 1e-5


def test_oracle_itself_matches_finite_differences():
    """The jacfwd(grad) oracle agrees with central differences of plain autograd gradients."""
    for name in ("mlp", "sdpa-lm"):
        c = get_case(name)
        H = case_hessian(name)
        op = HessianOperator(
            c.model, c.batches, c.loss, mode="finite_difference", dtype=torch.float64, weighting=c.weights
        )
        idx = torch.arange(0, op.dim, max(1, op.dim // 12))
        E = torch.zeros(op.dim, len(idx), dtype=torch.float64)
        E[idx, torch.arange(len(idx))] = 1.0
        assert rel_err(op.matmat(E), H[:, idx]) < 1e-6


def test_torch_func_hessian_pitfall_is_avoided():
    """torch.func.hessian (jacfwd(jacrev)) gets LayerNorm cross terms wrong in some torch versions;
    the operator and the oracle must agree with finite differences regardless."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, generator=g, dtype=torch.float64)
    b0 = torch.randn(4, generator=g, dtype=torch.float64)

    def f(th):
        return F.layer_norm(th[:12].view(3, 4), (4,), th[12:], b0).sin().sum()

    th = torch.cat([x0.reshape(-1), torch.randn(4, generator=g, dtype=torch.float64)])
    E = torch.eye(16, dtype=torch.float64)
    grad = torch.func.grad(f)
    fd = torch.stack([(grad(th + 1e-6 * E[i]) - grad(th - 1e-6 * E[i])) / 2e-6 for i in range(16)])
    assert rel_err(torch.func.jacfwd(torch.func.grad(f))(th), fd) < 1e-7


def test_weighted_mean_not_sum_of_batches():
    """Splitting the data into unequal micro-batches leaves the operator unchanged (example weighting)."""
    c = get_case("mlp")
    x = torch.cat([b[0] for b in c.batches])
    y = torch.cat([b[1] for b in c.batches])
    one = HessianOperator(c.model, [(x, y)], cross_entropy, dtype=torch.float64)
    many = HessianOperator(c.model, c.batches, cross_entropy, dtype=torch.float64)
    assert many.weighting == "examples" and many.weights == [7.0, 5.0, 3.0]
    v = random_vector(one.dim, 4)
    assert rel_err(many.matvec(v), one.matvec(v)) < 1e-12
    assert abs(many.loss_value - one.loss_value) < 1e-12
    assert rel_err(many.gradient(), one.gradient()) < 1e-12


def test_token_weighting_matches_token_weighted_oracle():
    c = get_case("sdpa-lm")
    op = HessianOperator(c.model, c.batches, cross_entropy, dtype=torch.float64, weighting="tokens")
    assert op.weighting == "tokens" and op.weights == c.meta["tokens"]
    H = exact_hessian(c.model, c.batches, cross_entropy, weights=c.meta["tokens"])
    v = random_vector(op.dim, 5)
    assert rel_err(op.matvec(v), H @ v) < 1e-10
    # and it really differs from example weighting (ignored targets make the batches unequal)
    assert rel_err(case_hessian("sdpa-lm") @ v, H @ v) > 1e-4


def test_hf_auto_weighting_is_shifted_tokens_and_float64_loss():
    c = get_case("gpt2")
    op = HessianOperator(c.model, c.batches, dtype=torch.float64)
    assert op.weighting.startswith("tokens") and op.weights == c.weights
    assert any(".float()" in n for n in op.notes)
    assert any("attn_implementation" in n for n in op.notes)
    v = random_vector(op.dim, 6)
    assert rel_err(op.matvec(v), case_hessian("gpt2") @ v) < 1e-10
    assert c.model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("mode", EXACT_MODES)
def test_matmat_equals_looped_matvec(mode):
    c = get_case("sdpa-lm")
    op = HessianOperator(c.model, c.batches, c.loss, mode=mode, dtype=torch.float64, max_matmat_bytes=1)
    V = torch.stack([random_vector(op.dim, s) for s in range(5)], dim=1)
    HV = op.matmat(V)
    assert op.num_matvecs == 5
    loop = torch.stack([op.matvec(V[:, j]) for j in range(5)], dim=1)
    assert rel_err(HV, loop) < 1e-12
    big = HessianOperator(c.model, c.batches, c.loss, mode=mode, dtype=torch.float64)
    assert rel_err(big.matmat(V), loop) < 1e-12
    assert op.weights == c.weights
    assert rel_err(HV, case_hessian("sdpa-lm") @ V) < 1e-10


def test_auto_mode_reuses_or_recomputes_by_memory():
    c = get_case("mlp")
    op = HessianOperator(c.model, c.batches, c.loss)
    assert op.mode == "reuse" and op.graph_bytes and op.graph_bytes > 0
    small = HessianOperator(c.model, c.batches, c.loss, max_graph_bytes=1)
    assert small.mode == "recompute"
    assert any("max_graph_bytes" in n for n in small.notes)
    v = random_vector(op.dim, 7, torch.float32)
    assert rel_err(small.matvec(v), op.matvec(v)) < 1e-6


def test_gradient_and_loss_value():
    c = get_case("cnn-bn")
    op = HessianOperator(c.model, c.batches, c.loss, dtype=torch.float64)
    ref = HessianOperator(c.model, c.batches, c.loss, dtype=torch.float64, mode="recompute")
    # reference by hand: float64 copy, eval mode, weighted mean of batch losses
    import copy

    m = copy.deepcopy(c.model).double().eval()
    total = sum(w * cross_entropy(m, (x.double(), y)) for (x, y), w in zip(c.batches, c.weights, strict=True))
    total = total / sum(c.weights)
    g = torch.autograd.grad(total, list(m.parameters()))
    g = torch.cat([t.reshape(-1) for t in g])
    assert abs(op.loss_value - float(total)) < 1e-12 and abs(ref.loss_value - float(total)) < 1e-12
    assert rel_err(op.gradient(), g) < 1e-12 and rel_err(ref.gradient(), g) < 1e-12


def test_params_subset():
    c = get_case("sdpa-lm")
    names = ["qkv.weight", "head.bias"]
    op = HessianOperator(c.model, c.batches, c.loss, params=names, dtype=torch.float64, weighting=c.weights)
    assert op.dim == 24 * 8 + 11 and op.param_names == names
    H = exact_hessian(c.model, c.batches, c.loss, params=names, weights=c.weights)
    v = random_vector(op.dim, 8)
    assert rel_err(op.matvec(v), H @ v) < 1e-10


def test_train_mode_model_gives_deterministic_operator():
    c = get_case("encoder-layer")  # dropout 0.1, left in train mode
    assert c.model.training
    op = HessianOperator(c.model, c.batches, c.loss, mode="recompute")
    v = random_vector(op.dim, 9, torch.float32)
    assert torch.equal(op.matvec(v), op.matvec(v))
    assert c.model.training and any("train mode" in n for n in op.notes)


def test_sdpa_fallback_note_and_restoration():
    c = get_case("sdpa-lm")  # hand-written F.scaled_dot_product_attention: found only by the failing probe
    before = _snapshot(c.model)
    flags = _sdp_flags()
    op = HessianOperator(c.model, c.batches, c.loss)
    assert not op.notes or not any("double backward" in n for n in op.notes)
    v = random_vector(op.dim, 10, torch.float32)
    hv1 = op.matvec(v)
    assert any("no double backward" in n for n in op.notes)
    assert rel_err(op.matvec(v), hv1) < 1e-7  # later matvecs on the kept graph are still right
    assert _snapshot(c.model) == before and _sdp_flags() == flags
    off = HessianOperator(c.model, c.batches, c.loss, attention="off")
    with pytest.raises(RuntimeError):
        off.matvec(v)


def test_math_attention_is_default_backend_afterwards():
    from torch.nn.attention import sdpa_kernel

    c = get_case("encoder-layer")
    op = HessianOperator(c.model, c.batches, c.loss, attention="math", mode="recompute")
    op.matvec(random_vector(op.dim, 11, torch.float32))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # a user context around the call is left alone
        op.matvec(random_vector(op.dim, 11, torch.float32))
        assert not torch.backends.cuda.math_sdp_enabled()
    assert torch.backends.cuda.math_sdp_enabled()


def test_bad_inputs():
    c = get_case("mlp")
    op = HessianOperator(c.model, c.batches, c.loss)
    with pytest.raises(ValueError, match="shape"):
        op.matvec(torch.zeros(op.dim + 1))
    with pytest.raises(ValueError, match="shape"):
        op.matmat(torch.zeros(op.dim))
    with pytest.raises(InputError, match="unknown parameter"):
        HessianOperator(c.model, c.batches, c.loss, params=["nope"])
    with pytest.raises(InputError, match="mode"):
        HessianOperator(c.model, c.batches, c.loss, mode="magic")
    with pytest.raises(InputError, match="weighting"):
        HessianOperator(c.model, c.batches, c.loss, weighting="bytes")
    with pytest.raises(InputError):
        HessianOperator(c.model, [], c.loss)
    with pytest.raises(InputError, match="scalar"):
        HessianOperator(c.model, c.batches, lambda m, b: m(b[0])).matvec(torch.zeros(op.dim))


def test_finite_difference_step_is_stated():
    c = get_case("mlp")
    op = HessianOperator(c.model, c.batches, c.loss, mode="finite_difference", dtype=torch.float64)
    assert op.fd_eps == pytest.approx(torch.finfo(torch.float64).eps ** (1 / 3))
    v = random_vector(op.dim, 12)
    theta = op.parameters_vector()
    assert op.fd_step(v) == pytest.approx(op.fd_eps * max(1.0, float(theta.norm())) / float(v.norm()))


def test_indefinite_case_has_comparable_extremes():
    ev = torch.linalg.eigvalsh(case_hessian("indefinite"))
    ratio = abs(float(ev[0])) / float(ev[-1])
    assert 0.3 < ratio < 1.5, ratio


# ------------------------------------------------------------------------------ GGN


@pytest.mark.parametrize("name,loss", GGN_CASES)
@pytest.mark.parametrize("mode", ["reuse", "recompute"])
def test_ggn_matches_dense(name, loss, mode):
    c = get_case(name)
    before = _snapshot(c.model)
    op = GGNOperator(c.model, c.batches, loss, mode=mode, dtype=torch.float64, weighting=c.weights)
    shift = name == "gpt2"
    out_loss = op.output_loss

    def fwd(m, b):
        return output_and_target(m, b, loss=loss, shift=shift)

    G = exact_ggn(c.model, c.batches, fwd, out_loss, weights=c.weights)
    V = torch.stack([random_vector(op.dim, s) for s in range(2)], dim=1)
    assert rel_err(op.matmat(V), G @ V) < 1e-10
    assert op.num_matvecs == 2
    ev = torch.linalg.eigvalsh(G)
    assert float(ev[0]) > -1e-10 * float(ev[-1])  # PSD, unlike the Hessian
    assert _snapshot(c.model) == before
    if loss == "mse":
        ref = HessianOperator(c.model, c.batches, mse, dtype=torch.float64)
        assert abs(op.loss_value - ref.loss_value) < 1e-12
        assert rel_err(op.gradient(), ref.gradient()) < 1e-12
    if name == "gpt2":
        ref = HessianOperator(c.model, c.batches, causal_lm_loss, dtype=torch.float64)
        assert abs(op.loss_value - ref.loss_value) < 1e-12
