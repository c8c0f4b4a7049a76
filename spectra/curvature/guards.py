"""Context managers that make a model's loss a deterministic, twice-differentiable function, then undo.

* :func:`eval_mode`: dropout off and BatchNorm on running statistics for the duration; every submodule's
  ``training`` flag is restored exactly afterwards (a random operator breaks Lanczos).
* :func:`frozen_buffers`: nothing that runs the model changes its buffers: BatchNorm in train mode
  (``eval_mode=False``) normalises with batch statistics without updating ``running_mean``,
  ``running_var`` or ``num_batches_tracked``, and any other buffer a forward pass writes (InstanceNorm
  statistics, counters, caches) is put back bit for bit when the context exits.
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
    "BufferKeeper",
    "eval_mode",
    "frozen_buffers",
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


class BufferKeeper:
    """Restores every buffer of ``model`` that a forward pass changes (see :func:`frozen_buffers`).

    A buffer is copied once, and again only when its version counter shows that someone else changed it
    between two uses, so a long-lived operator pays one copy of the buffers, not one per matvec.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self._saved: dict[str, tuple[int, torch.Tensor]] = {}

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        slots = [
            (f"{prefix}.{key}" if prefix else key, module, key, buf)
            for prefix, module in self.model.named_modules(remove_duplicate=False)
            for key, buf in module._buffers.items()
            if buf is not None
        ]
        entry: dict[str, int | None] = {}
        for name, _, _, buf in slots:
            version = _version(buf)
            saved = self._saved.get(name)
            if version is None or saved is None or saved[0] != version or saved[1].shape != buf.shape:
                self._saved[name] = (version, buf.detach().clone())
            entry[name] = version
        changed: list[tuple[nn.Module, bool]] = []
        for module in self.model.modules():  # BatchNorm in train mode: batch statistics, no update
            if (
                isinstance(module, nn.modules.batchnorm._BatchNorm)
                and module.training
                and module.track_running_stats
            ):
                changed.append((module, module.track_running_stats))
                module.track_running_stats = False
        try:
            yield
        finally:
            for module, flag in changed:
                module.track_running_stats = flag
            for name, module, key, buf in slots:
                if module._buffers.get(key) is not buf:  # a forward that re-assigned the buffer
                    module._buffers[key] = buf
                if entry[name] is None or _version(buf) != entry[name]:
                    with torch.no_grad():
                        if not torch.equal(buf, self._saved[name][1]):
                            buf.copy_(self._saved[name][1])
                    self._saved[name] = (_version(buf), self._saved[name][1])


def _version(t: torch.Tensor) -> int | None:
    try:
        return int(t._version)
    except (RuntimeError, AttributeError):  # inference tensors have no version counter
        return None


@contextlib.contextmanager
def frozen_buffers(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` without changing any of its buffers (BatchNorm running statistics included), even
    in train mode; buffers a forward pass writes are restored on exit."""
    with BufferKeeper(model)():
        yield model


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
