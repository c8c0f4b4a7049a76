"""A Hugging Face model folder: its config, the task (loss) it implies, and its model loaded with every
missing or unexpected tensor accounted for.

Tasks: ``causal-lm``, ``masked-lm``, ``sequence-classification``, ``image-classification`` (from the head in
``config.architectures``) and ``embedding`` (a sentence-transformers folder, or a text model without a head,
such as MiniLM's ``BertModel``). A checkpoint whose weights disagree with its config (tensors the model needs
but the file lacks, or tensors of the model's own modules the file has in excess) is refused in one line
unless ``allow_missing``; the report then lists what was freshly initialised. Tensors of a head the chosen
model does not have at all (``cls.*`` when loading a bare encoder) are ignored and listed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hessian_spectra.analyses.workloads.check import _line
from hessian_spectra.analyses.workloads.common import short_list
from hessian_spectra.errors import InputError

__all__ = [
    "TASKS",
    "infer_task",
    "load_config",
    "load_model",
    "load_tokenizer",
    "TOKENIZER_FILES",
    "quiet_transformers",
]

TASKS = ("causal-lm", "masked-lm", "sequence-classification", "embedding", "image-classification")
#: HF architecture suffixes -> task, used when ``--task`` is not given.
_TASK_SUFFIXES = (
    ("ForCausalLM", "causal-lm"), ("LMHeadModel", "causal-lm"), ("ForMaskedLM", "masked-lm"),
    ("ForSequenceClassification", "sequence-classification"), ("ForImageClassification", "image-classification"),
)  # fmt: skip
HEAD_SUFFIXES = {
    "causal-lm": ("ForCausalLM", "LMHeadModel"), "masked-lm": ("ForMaskedLM",),
    "sequence-classification": ("ForSequenceClassification",), "image-classification": ("ForImageClassification",),
}  # fmt: skip
#: Files any HF tokenizer is saved as; one must be in the model directory (never fetched from a hub).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
)  # fmt: skip
_WAYS_FORWARD = (
    "pass --task embedding (a sentence encoder: in-batch contrastive loss on text pairs), --task with a head the "
    "checkpoint has, or --model-factory module:function with your own model and loss"
)


def _auto_class(transformers: Any, task: str) -> Any:
    return {"causal-lm": transformers.AutoModelForCausalLM, "masked-lm": transformers.AutoModelForMaskedLM,
            "sequence-classification": transformers.AutoModelForSequenceClassification,
            "image-classification": transformers.AutoModelForImageClassification,
            "embedding": transformers.AutoModel}[task]  # fmt: skip


def infer_task(config: Any, folder: Path | None = None) -> str | None:
    """The loss a checkpoint implies: its head (``config.architectures``), else ``embedding`` for a
    sentence-transformers folder or a headless text model with a tokenizer; None when nothing fits."""
    archs = [str(a) for a in getattr(config, "architectures", None) or []]
    for arch in archs:
        for suffix, task in _TASK_SUFFIXES:
            if arch.endswith(suffix):
                return task
    if folder is not None and (folder / "modules.json").is_file():
        return "embedding"
    headless = archs and all(a.endswith("Model") for a in archs)
    has_tokenizer = folder is None or any((folder / f).is_file() for f in TOKENIZER_FILES)
    if headless and has_tokenizer and not hasattr(config, "num_channels"):
        return "embedding"
    return None


def no_loss_error(folder: Path, config: Any) -> InputError:
    archs = getattr(config, "architectures", None)
    return InputError(
        folder,
        f"no usable loss: architectures={archs} has no causal-LM, masked-LM or classification head; {_WAYS_FORWARD}",
    )


@contextmanager
def quiet_transformers(transformers: Any) -> Iterator[None]:
    """No 'Loading weights' bars or load-report tables while loading (the report lists missing and unused
    tensors itself; the CLI owns the terminal); both restored after."""
    utils = transformers.utils.logging
    was_enabled, verbosity = utils.is_progress_bar_enabled(), utils.get_verbosity()
    utils.disable_progress_bar()
    utils.set_verbosity_error()
    try:
        yield
    finally:
        utils.set_verbosity(verbosity)
        if was_enabled:
            utils.enable_progress_bar()


def load_config(model_dir: Path, transformers: Any) -> Any:
    """``AutoConfig`` of the folder; config.json is parsed with the readers' size/depth limits first."""
    from hessian_spectra.checkpoints.limits import read_json_limited

    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise InputError(model_dir, "not a Hugging Face model directory (no config.json)")
    if not isinstance(read_json_limited(cfg_path, "config.json"), dict):
        raise InputError(cfg_path, "config.json is not a JSON object")
    try:
        with quiet_transformers(transformers):
            return transformers.AutoConfig.from_pretrained(model_dir)
    except Exception as err:
        raise InputError(cfg_path, f"unreadable config ({type(err).__name__}: {_line(err)})") from None


def load_tokenizer(model_dir: Path, transformers: Any) -> Any:
    """The folder's own tokenizer (never fetched); InputError when there is none."""
    if not any((model_dir / f).is_file() for f in TOKENIZER_FILES):
        raise InputError(
            model_dir, f"no tokenizer in the model directory (looked for {', '.join(TOKENIZER_FILES)})"
        )
    try:
        with quiet_transformers(transformers):
            tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    except Exception as err:
        raise InputError(
            model_dir, f"no usable tokenizer in the model directory ({type(err).__name__})"
        ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def load_model(
    model_dir: Path, task: str, config: Any, kwargs: dict[str, Any], *, allow_missing: bool, transformers: Any
) -> tuple[Any, dict[str, Any]]:
    """The model for ``task`` with eager attention, and ``{"missing", "unexpected", "mismatched",
    "freshly_initialised", "ignored"}`` (see the module docstring; :func:`refuse_mismatch` decides once the
    parameters the loss uses are known). A checkpoint without the task's head is refused here already."""
    archs = [str(a) for a in getattr(config, "architectures", None) or []]
    suffix = HEAD_SUFFIXES.get(task)
    if suffix and archs and not any(a.endswith(suffix) for a in archs) and not allow_missing:
        raise InputError(
            model_dir, f"the checkpoint ({', '.join(archs)}) has no {task} head: its loss is undefined; "
            f"{_WAYS_FORWARD} (--allow-missing analyses a freshly initialised head)",
        )  # fmt: skip
    try:
        with quiet_transformers(transformers):
            model, info = _auto_class(transformers, task).from_pretrained(
                model_dir, attn_implementation="eager", output_loading_info=True, **kwargs
            )
    except Exception as err:
        raise InputError(
            model_dir, f"cannot load the model for {task} ({type(err).__name__}: {_line(err)})"
        ) from None
    children = {name for name, _ in model.named_children()}
    unexpected = sorted(info.get("unexpected_keys") or [])
    loading = {
        "missing": sorted(info.get("missing_keys") or []),
        "unexpected": [k for k in unexpected if k.split(".")[0] in children],
        "mismatched": [str(k[0] if isinstance(k, tuple | list) else k) for k in info.get("mismatched_keys") or []],
        "ignored": [k for k in unexpected if k.split(".")[0] not in children],
        "allow_missing": allow_missing,
    }  # fmt: skip
    loading["freshly_initialised"] = sorted(set(loading["missing"]) | set(loading["mismatched"]))
    return model, loading


def refuse_mismatch(model_dir: Path, loading: dict[str, Any], unused: list[str]) -> None:
    """The config/weights mismatch refusal: tensors the loss uses but the checkpoint lacks, tensors of the
    model's own modules the checkpoint holds in excess, different shapes; one line, unless --allow-missing.
    Missing tensors the loss does not use (``unused``: a pooler under an embedding loss) are only listed."""
    loading["unused_by_loss"] = sorted(unused)
    missing = [k for k in loading["missing"] if k not in set(unused)]
    extra, mismatched = loading["unexpected"], loading["mismatched"]
    if not (missing or extra or mismatched) or loading["allow_missing"]:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} model tensors are not in the checkpoint ({short_list(missing)})")
    if extra:
        parts.append(f"{len(extra)} checkpoint tensors are not in the model ({short_list(extra)})")
    if mismatched:
        parts.append(f"{len(mismatched)} tensors differ in shape ({short_list(mismatched)})")
    raise InputError(
        model_dir, "config.json and the weights disagree: " + "; ".join(parts)
        + "; pass --allow-missing to analyse with those tensors freshly initialised",
    )  # fmt: skip
