"""eval_mode and math_attention restore everything they touch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hessian_spectra.curvature.guards import (
    eval_mode,
    hf_attention_modules,
    is_double_backward_error,
    math_attention,
    model_state_hash,
    training_flags,
    uses_fused_attention,
)
from support.models import get_case
from torch import nn


def test_eval_mode_restores_mixed_flags_even_on_error():
    m = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.Sequential(nn.BatchNorm1d(2), nn.Dropout(0.1)))
    m.train()
    m[2][0].eval()  # a mixed state that model.train()/eval() alone would not restore
    flags = training_flags(m)
    with eval_mode(m):
        assert not any(mod.training for mod in m.modules())
    assert training_flags(m) == flags
    with pytest.raises(KeyError), eval_mode(m):
        raise KeyError("boom")
    assert training_flags(m) == flags


def _sdpa_double_backward() -> None:
    q = torch.randn(1, 2, 4, 3, requires_grad=True)
    (g,) = torch.autograd.grad(F.scaled_dot_product_attention(q, q, q).pow(2).sum(), q, create_graph=True)
    torch.autograd.grad(g.sum(), q)


def test_math_attention_enables_double_backward_and_restores_backend():
    flags = (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled())
    try:  # the default CPU kernel has no double backward in torch 2.13; a later torch may add one
        _sdpa_double_backward()
    except RuntimeError as err:
        assert is_double_backward_error(err)
    with math_attention(nn.Linear(1, 1)):
        _sdpa_double_backward()
    assert (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled()) == flags


def test_hf_attention_switched_and_restored():
    c = get_case("gpt2")
    assert c.model.config._attn_implementation == "sdpa"
    assert uses_fused_attention(c.model) is not None
    assert hf_attention_modules(c.model) == [c.model]
    h = model_state_hash(c.model)
    with math_attention(c.model):
        assert c.model.config._attn_implementation == "eager"
    assert c.model.config._attn_implementation == "sdpa"
    assert model_state_hash(c.model) == h


def test_static_detection():
    assert uses_fused_attention(nn.Linear(2, 2)) is None
    assert "MultiheadAttention" in uses_fused_attention(nn.Sequential(nn.MultiheadAttention(4, 2)))


def test_error_classifier():
    assert not is_double_backward_error(RuntimeError("shape mismatch"))
    assert not is_double_backward_error(ValueError("derivative for scaled_dot_product is not implemented"))
    assert is_double_backward_error(
        NotImplementedError(
            "Trying to use forward AD with _scaled_dot_product_flash_attention_for_cpu that does not support it"
        )
    )


def test_state_hash_sees_buffer_and_weight_changes():
    m = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    h = model_state_hash(m)
    with torch.no_grad():
        m[1].running_mean.add_(1.0)
    assert model_state_hash(m) != h
