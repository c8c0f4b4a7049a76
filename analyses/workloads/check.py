"""The loss evaluated once on every batch before any Hessian work, so a broken workload fails in one line
naming where (a factory, a model folder) and what (the exception, a NaN, a token id outside the vocabulary)
instead of as a traceback in the middle of Lanczos. Forward passes only, in eval mode, no gradients; the
model's modes are restored and its weights and buffers are not touched.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from hessian_spectra.errors import InputError, SpectraError
from torch import nn

__all__ = ["check_batches", "check_loss", "call_user"]


def check_batches(batches: Any, where: str | Path) -> list[Any]:
    """``batches`` as a non-empty list of batches (tensors, tuples/lists or mappings), else InputError."""
    if isinstance(batches, torch.Tensor | dict | str | bytes) or not hasattr(batches, "__iter__"):
        raise InputError(where, f"batches must be a list of batches, got {type(batches).__name__}")
    try:
        out = list(batches)
    except Exception as err:
        raise InputError(
            where, f"iterating over the batches raised {type(err).__name__}: {_line(err)}"
        ) from None
    if not out:
        raise InputError(where, "no batches: the list of batches is empty")
    for i, b in enumerate(out):
        if not isinstance(b, torch.Tensor | tuple | list | dict) and not hasattr(b, "keys"):
            raise InputError(
                where, f"batch {i} is a {type(b).__name__}, not a tensor, tuple or mapping of tensors"
            )
        if isinstance(b, tuple | list | dict) and not b:
            raise InputError(where, f"batch {i} is empty")
    return out


def _line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return (text[:240] + "...") if len(text) > 240 else (text or type(err).__name__)


def call_user(fn: Any, *args: Any, where: str | Path, what: str) -> Any:
    """``fn(*args)`` for user code (a factory, a loss): whatever it raises, or a ``sys.exit``, becomes one
    InputError "<where>: <what> raised <Type>: <message>"."""
    try:
        return fn(*args)
    except SpectraError as err:
        raise InputError(where, f"{what}: {getattr(err, 'problem', err)}") from None
    except SystemExit as err:
        raise InputError(where, f"{what} called sys.exit({err.code})") from None
    except Exception as err:
        raise InputError(where, f"{what} raised {type(err).__name__}: {_line(err)}") from None


def _vocab_problem(model: nn.Module, batch: Any) -> str | None:
    """A token id at or above the input embedding's size (the usual cause of an IndexError in a LM)."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    ids = batch.get("input_ids") if isinstance(batch, dict) else None
    if not isinstance(emb, nn.Embedding) or not isinstance(ids, torch.Tensor) or ids.numel() == 0:
        return None
    top = int(ids.max())
    if top >= emb.num_embeddings:
        return (
            f"token id {top} from the tokenizer is outside the model's vocabulary ({emb.num_embeddings} "
            "embeddings): the tokenizer and the config's vocab_size disagree"
        )
    return None


def check_loss(
    model: nn.Module, loss: Any, batches: list[Any], where: str | Path, *, find_unused: bool = False
) -> list[str]:
    """Evaluate the loss on every batch (the default loss is the model output's ``.loss``); InputError when
    it raises, exits, is not a scalar tensor or is not finite. ``find_unused`` also differentiates it once
    per batch and returns the trainable parameters no batch's loss depends on (no autograd path: their
    Hessian rows and columns are exactly zero), else []."""
    from contextlib import nullcontext

    from hessian_spectra.curvature.guards import eval_mode
    from hessian_spectra.curvature.losses import cast_floating, model_loss

    if loss is not None and not callable(loss):
        raise InputError(where, f"loss must be callable as loss(model, batch), got {type(loss).__name__}")
    fn = loss or model_loss
    first = next(iter(model.parameters()), None)
    if first is None:
        raise InputError(where, "the model has no parameters: there is no Hessian to take")
    dtype = first.dtype if first.is_floating_point() else None
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad] if find_unused else []
    used: set[str] = set()
    with nullcontext() if find_unused else torch.no_grad(), eval_mode(model):
        for i, batch in enumerate(batches):
            moved = cast_floating(batch, dtype, first.device) if dtype is not None else batch
            nested = moved.get("anchor") if isinstance(moved, dict) else None
            problem = _vocab_problem(model, nested if isinstance(nested, dict) else moved)
            if problem:
                raise InputError(where, f"batch {i}: {problem}")
            value = call_user(fn, model, moved, where=where, what=f"the loss on batch {i}")
            _check_value(value, i, where)
            if named and value.requires_grad:
                grads = torch.autograd.grad(value, [p for _, p in named], allow_unused=True)
                used.update(n for (n, _), g in zip(named, grads, strict=True) if g is not None)
    if find_unused and not used:
        raise InputError(where, "the loss does not depend on any trainable parameter: its Hessian is zero")
    return [n for n, _ in named if n not in used]


def _check_value(value: Any, i: int, where: str | Path) -> None:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        what = (
            type(value).__name__
            if not isinstance(value, torch.Tensor)
            else f"a tensor of shape {tuple(value.shape)}"
        )
        raise InputError(
            where, f"the loss on batch {i} returned {what}, not a scalar tensor (the batch's mean loss)"
        )
    v = float(value.detach().float())
    if not math.isfinite(v):
        raise InputError(
            where, f"the loss is {v} on batch {i}: the Hessian of a non-finite loss is undefined"
        )
