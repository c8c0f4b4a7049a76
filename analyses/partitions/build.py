"""Building a Partition: the architecture rules applied to every trainable parameter of a live model, a
name->tensor/shape mapping, or a Hugging Face folder's tensor shapes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hessian_spectra.analyses.partitions.classify import ParamInfo, classify
from hessian_spectra.analyses.partitions.partition import Partition, _build
from hessian_spectra.analyses.partitions.rules import BlockRule, arch_info
from hessian_spectra.errors import InputError


def _param_infos(model: Any, config: Any | None) -> tuple[list[ParamInfo], dict[str, str], list[str], Any]:
    """ParamInfos of trainable parameters, tied aliases {alias: canonical}, frozen names, config."""
    infos: list[ParamInfo] = []
    tied: dict[str, str] = {}
    frozen: list[str] = []
    if isinstance(model, torch.nn.Module):
        if config is None:
            config = getattr(model, "config", None)
        modules = dict(model.named_modules())
        seen: dict[int, str] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            if id(p) in seen:
                tied[name] = seen[id(p)]
                continue
            seen[id(p)] = name
            if not p.requires_grad:
                frozen.append(name)
                continue
            owner = modules.get(name.rsplit(".", 1)[0] if "." in name else "", model)
            infos.append(ParamInfo(name, tuple(p.shape), type(owner).__name__))
        return infos, tied, frozen, config
    if isinstance(model, Mapping):
        ptrs: dict[tuple[int, tuple[int, ...]], str] = {}
        for name, value in model.items():
            shape = tuple(value.shape) if hasattr(value, "shape") else tuple(value)
            if isinstance(value, torch.Tensor) and value.numel() > 0:
                key = (value.data_ptr(), shape)
                if key in ptrs:
                    tied[name] = ptrs[key]
                    continue
                ptrs[key] = name
            infos.append(ParamInfo(name, tuple(int(s) for s in shape), None))
        return infos, tied, frozen, config
    raise InputError(
        None, f"cannot partition a {type(model).__name__}: give an nn.Module or a name->tensor mapping"
    )


def _config_dict(config: Any | None) -> dict[str, Any] | None:
    if config is None:
        return None
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):
        try:
            return config.to_dict()
        except Exception:  # noqa: BLE001 - a broken config must not stop the partition
            return None
    return None


def partition_model(model: Any, config: Any | None = None) -> Partition:
    """Partition every trainable parameter of ``model`` (nn.Module or name->tensor/shape mapping).

    ``config`` (HF config or dict; defaults to ``model.config``) supplies heads, kv heads and
    head_dim. Parameters no rule covers are listed in ``unresolved`` with the reason, never lumped.
    """
    infos, tied, frozen, config = _param_infos(model, config)
    arch = arch_info(config)
    entries: dict[str, BlockRule] = {}
    unresolved: list[str] = []
    unresolved_info: dict[str, dict[str, Any]] = {}
    for info in infos:
        role, rule, reason = classify(info, arch)
        if rule is None:
            unresolved.append(info.name)
            unresolved_info[info.name] = {"shape": list(info.shape), "role": role, "reason": reason}
        else:
            entries[info.name] = rule
    model_info = {
        "class": type(model).__name__ if isinstance(model, torch.nn.Module) else None,
        "arch": arch.to_dict(),
        "tied": tied,
        "frozen": frozen,
        "unresolved": unresolved_info,
    }
    return _build(entries, unresolved, model_info)


#: Float tensors Hugging Face models keep as buffers, by their last name components (int/bool tensors such as
#: ``position_ids`` are recognised by dtype): rotary frequencies and GPT-2/GPT-Neo causal masks (4-D).
FLOAT_BUFFER_SUFFIXES = (("inv_freq",), ("attn", "masked_bias"), ("attention", "masked_bias"))
MASK_BUFFER_SUFFIXES = (("attn", "bias"), ("attention", "bias"))


def buffer_reason(name: str, shape: tuple[int, ...], dtype: str) -> str | None:
    """Why a checkpoint tensor is a buffer and not a parameter (None: a parameter). ``dtype`` is the
    safetensors dtype code (``F32``, ``BF16``, ``I64``, ``BOOL``, ...)."""
    if not dtype.startswith(("F", "BF")):
        return f"{dtype} tensor: only floating-point tensors are trained"
    parts = tuple(name.split("."))
    if any(parts[-len(s) :] == s for s in FLOAT_BUFFER_SUFFIXES):
        return "a known Hugging Face buffer (rotary frequencies / attention mask constant)"
    if len(shape) == 4 and any(parts[-len(s) :] == s for s in MASK_BUFFER_SUFFIXES):
        return "a 4-D causal attention mask (GPT-2 style buffer)"
    return None


def partition_checkpoint(path: str | Path) -> Partition:
    """Partition a Hugging Face folder (config.json + *.safetensors) from tensor shapes alone.

    Buffers saved with the weights (``position_ids``, rotary ``inv_freq``, causal masks; see
    :func:`buffer_reason`) are not parameters and get no learning rate: they are listed in
    ``model_info["buffers"]`` with the reason instead.
    """
    from safetensors import safe_open

    folder = Path(path)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise InputError(folder, "no config.json: the partition needs heads and head_dim from the config")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(cfg_path, f"not valid JSON ({err})") from err
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise InputError(folder, "no *.safetensors files")
    shapes: dict[str, tuple[int, ...]] = {}
    buffers: dict[str, dict[str, Any]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                sl = fh.get_slice(key)
                shape, dtype = tuple(int(d) for d in sl.get_shape()), str(sl.get_dtype())
                reason = buffer_reason(key, shape, dtype)
                if reason is None:
                    shapes[key] = shape
                else:
                    buffers[key] = {"shape": list(shape), "dtype": dtype, "reason": reason}
    part = partition_model(shapes, config)
    info = dict(part.model_info)
    info["source"] = str(folder)
    info["buffers"] = buffers
    return _build(dict(part.entries), list(part.unresolved), info)
