"""Context managers that make a model's loss a deterministic, twice-differentiable function, then undo.

* :func:`eval_mode`: dropout off and BatchNorm on running statistics for the duration; every submodule's
  ``training`` flag is restored exactly afterwards (a random operator breaks Lanczos).
* :func:`math_attention`: the fused ``scaled_dot_product_attention`` kernels on CPU (and the fast paths of
  ``nn.MultiheadAttention``/``nn.TransformerEncoderLayer``, HF ``attn_implementation="sdpa"``) have no
  double backward; the MATH backend and HF eager attention do. Restored afterwards.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch
from torch import nn

__all__ = [
    "eval_mode",
    "math_attention",
    "hf_attention_modules",
    "uses_fused_attention",
    "is_double_backward_error",
]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the duration; restore each submodule's ``training`` flag exactly."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def hf_attention_modules(model: nn.Module) -> list[nn.Module]:
    """Outermost submodules (``model`` included) that carry an HF config with an attention implementation."""
    found: list[nn.Module] = []
    covered: set[int] = set()
    for module in model.modules():
        if id(module) in covered:
            continue
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            found.append(module)
            covered.update(id(m) for m in module.modules())
    return found


def uses_fused_attention(model: nn.Module) -> str | None:
    """A reason string when ``model`` statically looks like it calls a fused attention kernel, else None."""
    for module in hf_attention_modules(model):
        impl = getattr(module.config, "_attn_implementation", None)
        if impl not in (None, "eager"):
            return f"HF model {type(module).__name__} uses attn_implementation={impl!r}"
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            return f"{name or 'model'} is an nn.MultiheadAttention (fused SDPA fast path)"
    return None


_KERNEL = re.compile(
    r"scaled_dot_product|flash_attention|efficient_attention|_fused_sdp|attention", re.IGNORECASE
)
_MISSING = re.compile(
    r"derivative for .* is not implemented|forward AD|not (been )?implemented|double backward", re.IGNORECASE
)


def is_double_backward_error(err: BaseException) -> bool:
    """True when ``err`` is autograd's complaint that a fused attention kernel has no second derivative."""
    if not isinstance(err, (RuntimeError, NotImplementedError)):
        return False
    msg = str(err)
    return bool(_KERNEL.search(msg)) and bool(_MISSING.search(msg))


@contextlib.contextmanager
def math_attention(model: nn.Module, notes: list[str] | None = None) -> Iterator[None]:
    """Force twice-differentiable attention: SDPA MATH backend plus HF eager attention, restored after.

    ``notes`` (optional) receives a line for every HF model whose implementation could not be switched.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    switched: list[tuple[nn.Module, str]] = []
    try:
        for module in hf_attention_modules(model):
            impl = module.config._attn_implementation
            if impl in (None, "eager"):
                continue
            setter = getattr(module, "set_attn_implementation", None)
            try:
                if setter is not None:
                    setter("eager")
                else:
                    module.config._attn_implementation = "eager"
                switched.append((module, impl))
            except Exception as err:  # pragma: no cover - depends on the transformers version
                if notes is not None:
                    notes.append(
                        f"could not switch {type(module).__name__} to eager attention ({err}); "
                        "relying on the SDPA MATH backend"
                    )
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        for module, impl in reversed(switched):
            setter = getattr(module, "set_attn_implementation", None)
            if setter is not None:
                setter(impl)
            else:
                module.config._attn_implementation = impl


@contextlib.contextmanager
def no_guard() -> Iterator[None]:
    """A do-nothing context (the operator's guard when none is needed)."""
    yield


def model_state_hash(model: nn.Module) -> str:
    """SHA-256 over every parameter's and buffer's bytes (names included); for tests of non-mutation."""
    import hashlib

    h = hashlib.sha256()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def training_flags(model: nn.Module) -> list[tuple[str, bool]]:
    """Every submodule's ``training`` flag, by name (for tests of non-mutation)."""
    return [(name, m.training) for name, m in model.named_modules()]
