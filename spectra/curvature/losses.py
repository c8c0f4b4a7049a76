"""The batch and loss protocol shared by the curvature operators.

A *batch* is a tensor, an ``(inputs, targets)`` tuple/list, or a mapping (HF style, ``"labels"`` with
-100 for ignored positions). A *loss* is ``loss(model, batch) -> scalar tensor``, the MEAN over the
batch; the operators weight batches by their example or token counts so that the result is the
Hessian of the mean loss over all the data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from hessian_spectra.errors import InputError
from torch import nn

__all__ = [
    "LossFn",
    "as_batch_list",
    "cast_floating",
    "batch_examples",
    "batch_tokens",
    "batch_size_hint",
    "is_causal_lm",
    "resolve_weights",
    "cross_entropy",
    "mse",
    "model_loss",
    "causal_lm_loss",
]

LossFn = Callable[[nn.Module, Any], torch.Tensor]
IGNORE_INDEX = -100


def as_batch_list(batches: Any) -> list[Any]:
    """Materialise ``batches`` as a list; a single tensor or mapping counts as one batch."""
    if isinstance(batches, (torch.Tensor, Mapping)):
        return [batches]
    if isinstance(batches, Iterable):
        out = list(batches)
        if not out:
            raise InputError(None, "no batches given: the operator needs at least one batch")
        return out
    raise InputError(None, f"batches must be a sequence of batches, got {type(batches).__name__}")


def cast_floating(batch: Any, dtype: torch.dtype, device: torch.device | None = None) -> Any:
    """Cast every floating tensor in ``batch`` (recursively) to ``dtype``; integer tensors stay as they are."""
    if isinstance(batch, torch.Tensor):
        if batch.is_floating_point():
            batch = batch.to(dtype)
        return batch if device is None else batch.to(device)
    if isinstance(batch, Mapping):
        return {k: cast_floating(v, dtype, device) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(cast_floating(v, dtype, device) for v in batch)
    if isinstance(batch, list):
        return [cast_floating(v, dtype, device) for v in batch]
    return batch


def _first_tensor(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping):
        for key in ("input_ids", "inputs_embeds", "pixel_values", "labels"):
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key]
        values: Iterable[Any] = batch.values()
    elif isinstance(batch, (tuple, list)):
        values = batch
    else:
        return None
    for v in values:
        t = _first_tensor(v)
        if t is not None:
            return t
    return None


def batch_examples(batch: Any) -> int:
    """Number of examples: the leading dimension of the batch's first tensor (``input_ids`` for mappings)."""
    t = _first_tensor(batch)
    if t is None:
        raise InputError(None, f"cannot count examples in a batch of type {type(batch).__name__}")
    return 1 if t.ndim == 0 else int(t.shape[0])


def batch_size_hint(batch: Any) -> int:
    """Element count of the batch's first tensor (examples x sequence length); scales graph memory."""
    t = _first_tensor(batch)
    return 1 if t is None else max(1, int(t.numel()))


def _labels(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, Mapping):
        lab = batch.get("labels")
        return lab if isinstance(lab, torch.Tensor) else None
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[1], torch.Tensor):
        return None if batch[1].is_floating_point() else batch[1]
    return None


def batch_tokens(batch: Any, shift: bool = False) -> int:
    """Number of labels != -100 (the positions a mean token loss averages over).

    ``shift=True`` drops the first position of each sequence, as HF causal LMs predict token t+1 from t.
    """
    lab = _labels(batch)
    if lab is None:
        raise InputError(None, "token weighting needs integer labels (a 'labels' entry or (inputs, targets))")
    if shift:
        lab = lab[..., 1:]
    return int((lab != IGNORE_INDEX).sum())


def is_causal_lm(model: nn.Module) -> bool:
    """True for HF causal language models (their loss shifts labels by one position)."""
    name = type(model).__name__
    return name.endswith("ForCausalLM") or name.endswith("LMHeadModel")


def resolve_weights(
    batches: Sequence[Any],
    weighting: str | Sequence[float],
    shift_labels: bool,
) -> tuple[str, list[float]]:
    """Per-batch weights and a description of the rule.

    ``"examples"``: batch sizes; ``"tokens"``: labels != -100 (shifted for causal LMs); ``"equal"``: 1 each;
    ``"auto"``: tokens for mapping batches with ``labels``, else examples; or explicit numbers.
    """
    if not isinstance(weighting, str):
        weights = [float(w) for w in weighting]
        if len(weights) != len(batches):
            raise InputError(None, f"weighting has {len(weights)} numbers for {len(batches)} batches")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise InputError(None, "explicit weights must be non-negative with a positive sum")
        return "explicit", weights
    rule = weighting
    if rule == "auto":
        has_labels = all(isinstance(b, Mapping) and "labels" in b for b in batches)
        rule = "tokens" if has_labels else "examples"
    if rule == "examples":
        return "examples", [float(batch_examples(b)) for b in batches]
    if rule == "tokens":
        desc = "tokens (labels != -100, shifted by one for a causal LM)" if shift_labels else "tokens"
        weights = [float(batch_tokens(b, shift=shift_labels)) for b in batches]
        if sum(weights) <= 0:
            raise InputError(None, "no label in any batch differs from -100: nothing to average over")
        return desc, weights
    if rule == "equal":
        return "equal", [1.0] * len(batches)
    raise InputError(None, f"unknown weighting {weighting!r}: use auto, examples, tokens, equal or numbers")


def _split_xy(batch: Any) -> tuple[Any, torch.Tensor]:
    if isinstance(batch, Mapping):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        if "labels" not in batch:
            raise InputError(None, "mapping batch has no 'labels' entry")
        return inputs, batch["labels"]
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise InputError(None, "expected an (inputs, targets) batch")


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(inputs)


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, Mapping):
        logits = out.get("logits")
    if logits is None and isinstance(out, (tuple, list)):
        logits = out[0]
    if not isinstance(logits, torch.Tensor):
        raise InputError(None, "model output has no logits tensor")
    return logits


def cross_entropy(model: nn.Module, batch: Any) -> torch.Tensor:
    """Mean cross-entropy of ``model(x)`` against integer targets ``y`` (-100 ignored; any leading dims)."""
    inputs, y = _split_xy(batch)
    logits = _logits(_call(model, inputs))
    y = y.to(logits.device)  # a model split over devices returns logits on its last one
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE_INDEX)


def mse(model: nn.Module, batch: Any) -> torch.Tensor:
    """Mean squared error of ``model(x)`` against ``y`` (mean over every element)."""
    inputs, y = _split_xy(batch)
    out = _logits(_call(model, inputs))
    # written out rather than F.mse_loss: its fused backward breaks torch.func forward-over-reverse
    return (out - y.reshape(out.shape).to(device=out.device, dtype=out.dtype)).pow(2).mean()


def model_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """The loss the model computes itself (HF: ``model(**batch).loss``)."""
    if isinstance(batch, Mapping):
        out = model(**batch)
    elif isinstance(batch, (tuple, list)):
        out = model(*batch)
    else:
        out = model(batch)
    loss = getattr(out, "loss", None)
    if loss is None and isinstance(out, Mapping):
        loss = out.get("loss")
    if not isinstance(loss, torch.Tensor):
        raise InputError(None, "loss=None needs a model whose output has .loss (pass labels in the batch)")
    return loss


def causal_lm_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """HF causal-LM loss computed here in the logits' own dtype: mean CE of token t+1 given t, -100 ignored.

    Same value as ``model(**batch).loss`` but without HF's ``logits.float()``, which would silently
    DOWNcast a float64 computation to float32.
    """
    inputs, labels = _split_xy(batch)
    logits = _logits(_call(model, inputs))
    logits, labels = logits[..., :-1, :], labels[..., 1:].to(logits.device)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX
    )
