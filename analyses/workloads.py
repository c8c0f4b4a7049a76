"""Models and data from the command line: the ``--model-factory module:function`` protocol.

A factory is any importable callable taking no arguments and returning either a mapping with keys
``model`` (an ``nn.Module``), ``batches`` (a list of batches, see :mod:`hessian_spectra.curvature.losses`) and optionally
``loss`` (``loss(model, batch) -> mean loss``; default: the model output's ``.loss``), or the tuple
``(model, loss, batches)``. ``module`` may be a dotted module name or a path to a ``.py`` file.
Checkpoint weights (``.safetensors`` or a ``weights_only`` torch state dict) can be loaded into the
returned model with :func:`load_weights`.

Placement (:func:`place_model`, :func:`load_hf_workload`): ``device`` puts a model on one device; a HF
directory can instead be spread over every visible GPU with ``device_map="auto"`` (needs ``accelerate``),
loaded shard by shard straight onto its devices, in the checkpoint's own dtype (``config.dtype``) unless
a dtype is asked for. Parameters offloaded to CPU/disk by a device map are refused (HVPs need them
resident). Batches stay on the CPU here; the curvature operators move them to the input device.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hessian_spectra.errors import InputError
from torch import nn

__all__ = ["Workload", "load_factory", "load_weights", "place_model", "model_placement", "DEVICE_MAPS"]

#: ``--device-map`` values: ``"auto"`` spreads a HF model over the visible GPUs (accelerate's planner).
DEVICE_MAPS = ("auto",)


@dataclass(frozen=True, eq=False)
class Workload:
    """A model with the loss and batches its Hessian is taken over."""

    model: nn.Module
    loss: Any
    batches: list[Any]
    source: str
    placement: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None  # how the data became batches (task, tokenizer): report provenance


def _import(module: str):
    if module.endswith(".py") or "/" in module:
        path = Path(module)
        if not path.is_file():
            raise InputError(module, "model factory file not found")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise InputError(module, "cannot import this file")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise InputError(module, f"cannot import module ({err})") from err


def load_factory(spec: str, weights: str | Path | None = None, *, device: str | None = None) -> Workload:
    """Call the ``module:function`` factory and check what it returns (see the module docstring); then
    load ``weights`` into the model and move it to ``device`` (see :func:`place_model`)."""
    if ":" not in spec:
        raise InputError("--model-factory", f"expected module:function, got {spec!r}")
    module, _, name = spec.rpartition(":")
    fn = getattr(_import(module), name, None)
    if not callable(fn):
        raise InputError("--model-factory", f"{module} has no callable {name!r}")
    out = fn()
    if isinstance(out, Mapping):
        model, loss, batches = out.get("model"), out.get("loss"), out.get("batches")
    elif isinstance(out, tuple | list) and len(out) == 3:
        model, loss, batches = out
    else:
        raise InputError(
            "--model-factory", "factory must return {'model', 'batches', 'loss'} or (model, loss, batches)"
        )
    if not isinstance(model, nn.Module):
        raise InputError("--model-factory", f"factory returned a {type(model).__name__}, not an nn.Module")
    if batches is None or (isinstance(batches, list | tuple) and not batches):
        raise InputError("--model-factory", "factory returned no batches")
    if weights is not None:
        load_weights(model, weights)
    if device is not None:
        place_model(model, device)
    return Workload(
        model=model, loss=loss, batches=list(batches), source=spec, placement=model_placement(model)
    )


def place_model(model: nn.Module, device: str) -> nn.Module:
    """Move ``model`` to ``device`` in place, unless it is already spread over several devices (a device
    map someone chose on purpose: it is left as it is). Returns the model."""
    devices = {t.device for t in (*model.parameters(), *model.buffers())}
    if len(devices) <= 1:
        model.to(device)
    return model


def model_placement(model: nn.Module) -> dict[str, Any]:
    """Where the model lives, for the report: device(s) with their parameter counts, dtype(s), device map."""
    by_device: dict[str, int] = {}
    dtypes: set[str] = set()
    for p in model.parameters():
        by_device[str(p.device)] = by_device.get(str(p.device), 0) + p.numel()
        dtypes.add(str(p.dtype).removeprefix("torch."))
    hf_map = getattr(model, "hf_device_map", None)
    return {
        "parameters_by_device": by_device,
        "dtypes": sorted(dtypes),
        "device_map": None
        if not isinstance(hf_map, Mapping)
        else {str(k): str(v) for k, v in hf_map.items()},
    }


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a ``.safetensors`` file or a torch state dict (``weights_only=True``) into ``model`` (strict)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(path, f"cannot read weights ({type(err).__name__}: {err})") from err
    if not isinstance(state, Mapping):
        raise InputError(path, "not a state dict")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(
            path,
            f"weights do not match the model: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}",
        )


#: HF architectures suffixes -> task, used when ``--task`` is not given.
_TASK_SUFFIXES = (
    ("ForCausalLM", "causal-lm"), ("LMHeadModel", "causal-lm"), ("ForMaskedLM", "masked-lm"),
    ("ForSequenceClassification", "sequence-classification"),
)  # fmt: skip
TASKS = ("causal-lm", "masked-lm", "sequence-classification")


def infer_task(config: Any) -> str | None:
    """The loss a checkpoint's config implies: from ``architectures`` (causal LM, masked LM, sequence
    classification), else None."""
    for arch in getattr(config, "architectures", None) or []:
        for suffix, task in _TASK_SUFFIXES:
            if str(arch).endswith(suffix):
                return task
    return None


def read_texts(path: str | Path) -> list[str]:
    """Non-empty lines of a text file, or the ``text`` field of every JSONL record (``label`` kept aside)."""
    return [t for t, _ in read_records(path)]


def read_records(path: str | Path) -> list[tuple[str, int | None]]:
    """(text, label or None) per line of a .txt or .jsonl file."""
    import json

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "data file not found")
    out: list[tuple[str, int | None]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix in (".jsonl", ".json"):
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as err:
                raise InputError(path, f"line {i} is not JSON ({err})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise InputError(path, f"line {i}: expected an object with a 'text' string")
            label = rec.get("label")
            out.append((rec["text"], int(label) if label is not None else None))
    else:
        out = [(line, None) for line in lines if line.strip()]
    if not out:
        raise InputError(path, "no text found")
    return out


#: Files any HF tokenizer is saved as; one must be in the model directory (never fetched from a hub).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
)  # fmt: skip


@contextmanager
def _quiet_transformers(transformers) -> Iterator[None]:
    """No 'Loading weights' bars on stderr while loading (the CLI owns the terminal); restored after."""
    utils = transformers.utils.logging
    was_enabled = utils.is_progress_bar_enabled()
    utils.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            utils.enable_progress_bar()


def load_hf_workload(
    model_dir: str | Path,
    data: str | Path,
    *,
    task: str | None = None,
    batch_size: int = 8,
    seq_len: int = 128,
    max_batches: int = 4,
    seed: int = 0,
    device: str | None = None,
    device_map: str | None = None,
    dtype: str | None = None,
    max_memory: Mapping[Any, Any] | None = None,
    tokenizer_dir: str | Path | None = None,
) -> Workload:
    """A Hugging Face model directory plus a text/JSONL file tokenised by the checkpoint's own tokenizer.

    Loss (inferred from ``config.architectures``, overridable with ``task``): ``causal-lm`` (next-token
    cross-entropy, labels = input ids, padding ignored), ``masked-lm`` (15% of non-special tokens masked
    with the tokenizer's mask token, seeded), ``sequence-classification`` (JSONL ``label`` per record).
    A checkpoint without the matching head (e.g. a bare encoder such as MiniLM's BertModel) is refused:
    its loss would need a head the checkpoint does not have.

    Placement: weights load in ``dtype`` (``"float32"``/``"float64"``/``"bfloat16"``; None: the dtype in the
    config, i.e. transformers' ``dtype="auto"``), shard by shard. ``device_map="auto"`` spreads the model
    over the visible GPUs (accelerate's planner; ``device`` is then not used; on a machine without a GPU
    everything lands on the CPU); otherwise ``device`` (None: CPU) holds it all, loaded straight onto it
    when accelerate is installed, else loaded on the CPU and moved. A map that offloads part of the model
    to CPU RAM or disk is refused (offloaded weights are swapped in by hooks, out of reach of the
    HVP's differentiated copies). ``max_memory`` (with the map; e.g. ``{0: "60GiB", 1: "70GiB"}``) caps
    what the planner puts on each device, to leave room for activations and the Lanczos vectors.
    ``tokenizer_dir``: where the tokenizer is, when not in ``model_dir`` (a Trainer checkpoint saved
    without it).
    """
    import torch

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise InputError(model_dir, "not a Hugging Face model directory (no config.json)")
    try:
        import transformers
    except ImportError:
        raise InputError(model_dir, "reading a model directory needs the 'transformers' package") from None
    try:
        config = transformers.AutoConfig.from_pretrained(model_dir)
    except Exception as err:
        raise InputError(
            model_dir / "config.json", f"unreadable config ({type(err).__name__}: {err})"
        ) from None
    task = task or infer_task(config)
    if task is None:
        archs = getattr(config, "architectures", None)
        raise InputError(
            model_dir, f"cannot infer the loss from architectures={archs}: no causal-LM, masked-LM or "
            "sequence-classification head; pass --task (the checkpoint must have that head)",
        )  # fmt: skip
    if task not in TASKS:
        raise InputError("--task", f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    auto = {"causal-lm": transformers.AutoModelForCausalLM, "masked-lm": transformers.AutoModelForMaskedLM,
            "sequence-classification": transformers.AutoModelForSequenceClassification}[task]  # fmt: skip
    tok_dir = model_dir if tokenizer_dir is None else Path(tokenizer_dir)
    if not any((tok_dir / f).is_file() for f in TOKENIZER_FILES):
        raise InputError(
            tok_dir, f"no tokenizer in the model directory (looked for {', '.join(TOKENIZER_FILES)})"
        )
    try:
        tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
    except Exception as err:
        raise InputError(
            tok_dir, f"no usable tokenizer in the model directory ({type(err).__name__})"
        ) from None
    archs = getattr(config, "architectures", None) or []
    suffix = {"causal-lm": ("ForCausalLM", "LMHeadModel"), "masked-lm": ("ForMaskedLM",),
              "sequence-classification": ("ForSequenceClassification",)}[task]  # fmt: skip
    if archs and not any(str(a).endswith(suffix) for a in archs):
        raise InputError(
            model_dir, f"the checkpoint ({', '.join(archs)}) has no {task} head; its loss is undefined"
        )
    kwargs = _placement_kwargs(transformers, device=device, device_map=device_map, dtype=dtype)
    if max_memory is not None:
        if device_map is None:
            raise InputError(None, "max_memory is for a device map (device_map='auto')")
        kwargs["max_memory"] = dict(max_memory)
    try:
        with _quiet_transformers(transformers):
            model = auto.from_pretrained(model_dir, attn_implementation="eager", **kwargs)
    except Exception as err:
        raise InputError(
            model_dir, f"cannot load the model for {task} ({type(err).__name__}: {err})"
        ) from None
    hf_map = getattr(model, "hf_device_map", None) or {}
    spilled = sorted({str(v) for v in hf_map.values() if str(v) in ("cpu", "disk")})
    if any(p.device.type == "meta" for p in model.parameters()) or (spilled and _has_gpu_entries(hf_map)):
        raise InputError(
            "--device-map" if device_map is not None else "--device",
            f"the model does not fit: the device map offloads part of it ({', '.join(spilled) or 'meta device'}); "
            "HVPs need every parameter resident on a device (more GPUs or memory, a smaller --dtype, or --device cpu)",
        )
    if device is not None and "device_map" not in kwargs:
        model.to(device)
    model.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    records = read_records(data)
    need = batch_size * max(1, max_batches)
    records = records[:need]
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for i in range(0, len(records), batch_size):
        chunk = records[i : i + batch_size]
        enc = tok(
            [t for t, _ in chunk], padding=True, truncation=True, max_length=seq_len, return_tensors="pt"
        )
        batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if task == "causal-lm":
            labels = enc["input_ids"].clone()
            labels[enc["attention_mask"] == 0] = -100
        elif task == "masked-lm":
            if tok.mask_token_id is None:
                raise InputError(model_dir, "the tokenizer has no mask token: masked-LM loss impossible")
            special = torch.tensor(
                [
                    tok.get_special_tokens_mask(ids, already_has_special_tokens=True)
                    for ids in enc["input_ids"].tolist()
                ],
                dtype=torch.bool,
            )
            chosen = (
                (torch.rand(enc["input_ids"].shape, generator=gen) < 0.15)
                & ~special
                & (enc["attention_mask"] == 1)
            )
            labels = torch.where(chosen, enc["input_ids"], torch.full_like(enc["input_ids"], -100))
            batch["input_ids"] = torch.where(
                chosen, torch.full_like(enc["input_ids"], tok.mask_token_id), enc["input_ids"]
            )
        else:
            if any(lbl is None for _, lbl in chunk):
                raise InputError(
                    data, "sequence classification needs a JSONL file with a 'label' on every record"
                )
            labels = torch.tensor([lbl for _, lbl in chunk])
        batch["labels"] = labels
        batches.append(batch)
    if not batches or not any(bool((b["labels"] != -100).any()) for b in batches):
        raise InputError(
            data, f"no tokens to train on after tokenizing with {model_dir}'s tokenizer ({task})"
        )
    return Workload(
        model=model, loss=None, batches=batches, source=f"{model_dir} ({task}) on {Path(data).name}",
        placement=model_placement(model), meta={"task": task, "tokenizer": f"{type(tok).__name__} from {model_dir}"},
    )  # fmt: skip


#: ``--dtype`` names accepted when loading a HF model (None: the config's own dtype).
LOAD_DTYPES = ("float32", "float64", "bfloat16", "float16")


def _has_accelerate() -> bool:
    import importlib.util

    return importlib.util.find_spec("accelerate") is not None


def _has_gpu_entries(hf_map: Mapping[str, Any]) -> bool:
    """True when a device map puts something on a GPU (an int index or a ``cuda`` device)."""
    return any(isinstance(v, int) or str(v).startswith("cuda") for v in hf_map.values())


def _placement_kwargs(
    transformers: Any, *, device: str | None, device_map: str | None, dtype: str | None
) -> dict:
    """``from_pretrained`` keyword arguments for a dtype and a placement (transformers 4.x and 5.x).

    transformers >= 5 always initialises on the meta device and loads shard by shard (``low_cpu_mem_usage``
    is gone); 4.x is asked for it. The dtype keyword is ``dtype`` from 4.56 on, ``torch_dtype`` before.
    """
    import torch

    if dtype is not None and dtype not in LOAD_DTYPES:
        raise InputError("--dtype", f"must be one of {', '.join(LOAD_DTYPES)}, got {dtype!r}")
    if device_map is not None and device_map not in DEVICE_MAPS:
        raise InputError("--device-map", f"unknown device map {device_map!r}: use {' or '.join(DEVICE_MAPS)}")
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    kwargs: dict[str, Any] = {}
    kwargs["dtype" if (major, minor) >= (4, 56) else "torch_dtype"] = (
        "auto" if dtype is None else getattr(torch, dtype)
    )
    if major < 5:
        kwargs["low_cpu_mem_usage"] = True
    if device_map is not None:
        if not _has_accelerate():
            raise InputError("--device-map", "needs the 'accelerate' package (pip install accelerate)")
        kwargs["device_map"] = device_map
    elif device is not None and device != "cpu" and _has_accelerate():
        kwargs["device_map"] = {"": device}  # straight onto the GPU, one shard at a time
    return kwargs
