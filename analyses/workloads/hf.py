"""A Hugging Face model folder plus ``--data``, made into a workload with the checkpoint's own tokenizer or
image processor (see :func:`load_hf_workload`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hessian_spectra.analyses.workloads.check import check_loss
from hessian_spectra.analyses.workloads.common import Workload, model_placement
from hessian_spectra.analyses.workloads.hf_model import (
    TASKS,
    infer_task,
    load_config,
    load_model,
    load_tokenizer,
    no_loss_error,
    refuse_mismatch,
)
from hessian_spectra.analyses.workloads.placement import _has_gpu_entries, _placement_kwargs
from hessian_spectra.errors import InputError

__all__ = ["load_hf_workload"]


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
    allow_missing: bool = False,
    check: bool = True,
    tokenizer_dir: str | Path | None = None,
) -> Workload:
    """A HF model directory and its data, tokenised/preprocessed by the checkpoint's own tokenizer/processor.

    Loss (``task``; inferred from the folder when None, see :func:`~hessian_spectra.analyses.workloads.hf_model.infer_task`):
    ``causal-lm`` (next-token cross-entropy, padding ignored), ``masked-lm`` (15% of non-special tokens
    masked, seeded), ``sequence-classification`` (JSONL ``label``), ``embedding`` (in-batch contrastive loss
    on text pairs, pooled as the folder says: :mod:`~hessian_spectra.analyses.workloads.embedding`) and
    ``image-classification`` (``data`` a folder of class sub-folders: :mod:`~hessian_spectra.analyses.workloads.images`).
    ``max_batches`` batches of ``batch_size`` records are built (0: all records). A config that disagrees
    with the weights is refused unless ``allow_missing`` (the workload's ``loading`` lists what was freshly
    initialised). ``check`` evaluates and differentiates the loss on every batch first (one line naming the
    problem on failure); parameters no batch's loss depends on (BertModel's pooler under the embedding loss)
    are frozen on this freshly loaded model, so the Hessian leaves out their exactly-zero rows, and listed in
    ``inputs["excluded_from_hessian"]``; a tensor the checkpoint lacks among those is not a mismatch.

    Placement: weights load in ``dtype`` (``"float32"``/``"float64"``/``"bfloat16"``; None: the dtype in the
    config, i.e. transformers' ``dtype="auto"``), shard by shard. ``device_map="auto"`` spreads the model
    over the visible GPUs (accelerate's planner; ``device`` is then not used; on a machine without a GPU
    everything lands on the CPU); otherwise ``device`` (None: CPU) holds it all, loaded straight onto it
    when accelerate is installed, else loaded on the CPU and moved. A map that offloads part of the model
    to CPU RAM or disk is refused (offloaded weights are swapped in by hooks, out of reach of the
    HVP's differentiated copies). ``max_memory`` (with the map; e.g. ``{0: "60GiB", 1: "70GiB"}``) caps
    what the planner puts on each device, to leave room for activations and the Lanczos vectors.
    ``tokenizer_dir``: where the tokenizer is, when not in the model folder (a Trainer checkpoint saved
    without it).
    """
    from hessian_spectra.analyses.workloads import data as read

    model_dir, data = Path(model_dir), Path(data)
    if not model_dir.is_dir():
        raise InputError(model_dir, "not a Hugging Face model directory (not a folder)")
    try:
        import transformers
    except ImportError:
        raise InputError(model_dir, "reading a model directory needs the 'transformers' package") from None
    if task is not None and task not in TASKS:
        raise InputError("--task", f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    encoder = None
    if task in (None, "embedding") and (model_dir / "modules.json").is_file():
        from hessian_spectra.analyses.workloads.embedding import read_sentence_encoder

        encoder = read_sentence_encoder(model_dir)
    hf_dir = encoder.transformer_dir if encoder is not None else model_dir
    config = load_config(hf_dir, transformers)
    task = task or infer_task(config, model_dir)
    if task is None:
        raise no_loss_error(model_dir, config)
    inputs: dict[str, Any] = {"kind": "hf-folder", "model_dir": str(model_dir), "task": task, "data": str(data),
                              "batch_size": batch_size, "seq_len": seq_len, "seed": seed}  # fmt: skip
    limit = batch_size * max_batches if max_batches else None
    # cheap failures (data, tokenizer, processor) before the model is loaded
    if task == "image-classification":
        from hessian_spectra.analyses.workloads.images import load_image_processor

        processor = load_image_processor(hf_dir, transformers)
        read.list_images(data)
    else:
        tok_dir = hf_dir if tokenizer_dir is None else Path(tokenizer_dir)
        tok = load_tokenizer(tok_dir, transformers)
        inputs["tokenizer"] = f"{type(tok).__name__} from {tok_dir}"
        if task == "embedding":
            from hessian_spectra.analyses.workloads.embedding import read_sentence_encoder

            encoder = encoder or read_sentence_encoder(model_dir)
            pairs, how = read.read_pairs(data)
            pairs = pairs[:limit]
            if encoder.max_seq_length and seq_len > encoder.max_seq_length:
                seq_len = encoder.max_seq_length
            inputs.update(pairs=len(pairs), pairs_from=how, seq_len=seq_len, encoder=encoder.to_dict())
        else:
            records = read.read_records(data)[:limit]
            inputs.update(records=len(records))
    kwargs = _placement_kwargs(transformers, device=device, device_map=device_map, dtype=dtype)
    if max_memory is not None:
        if device_map is None:
            raise InputError(None, "max_memory is for a device map (device_map='auto')")
        kwargs["max_memory"] = dict(max_memory)
    model, loading = load_model(
        hf_dir, task, config, kwargs, allow_missing=allow_missing, transformers=transformers
    )
    _refuse_offload(model, device_map)
    if device is not None and "device_map" not in kwargs:
        model.to(device)
    model.eval()
    loss = None
    if task == "image-classification":
        from hessian_spectra.analyses.workloads.images import image_batches

        batches, info = image_batches(
            data, processor, config, batch_size=batch_size, max_batches=max_batches, seed=seed
        )
        inputs.update(info)
    elif task == "embedding":
        from hessian_spectra.analyses.workloads.embedding import ContrastiveLoss, pair_batches

        batches = pair_batches(pairs, tok, batch_size=batch_size, seq_len=seq_len)
        if not batches:
            raise InputError(data, "no batch of at least 2 pairs (raise --batch-size or add pairs)")
        loss = ContrastiveLoss(encoder.pooling, encoder.normalize)
        inputs.update(
            loss="multiple-negatives ranking: cross-entropy of 20 * cos(anchor_i, positive_j) over the batch"
        )
    else:
        from hessian_spectra.analyses.workloads.text_batches import text_batches

        batches = text_batches(records, tok, task, batch_size=batch_size, seq_len=seq_len, seed=seed, data=data,
                               model_dir=model_dir, num_labels=getattr(config, "num_labels", None))  # fmt: skip
    inputs["batches"] = len(batches)
    unused = check_loss(model, loss, batches, model_dir, find_unused=True) if check else []
    for name, param in model.named_parameters():
        if name in set(unused):
            param.requires_grad_(False)  # our own model: no path to the loss, so exactly zero Hessian rows
    if unused:
        inputs["excluded_from_hessian"] = {"parameters": unused, "why": "the loss does not depend on them"}
    refuse_mismatch(model_dir, loading, unused)
    return Workload(
        model=model, loss=loss, batches=batches, source=f"{model_dir} ({task}) on {data.name}",
        placement=model_placement(model), inputs=inputs, loading=loading, weights_source=str(hf_dir),
    )  # fmt: skip


def _refuse_offload(model: Any, device_map: str | None) -> None:
    hf_map = getattr(model, "hf_device_map", None) or {}
    spilled = sorted({str(v) for v in hf_map.values() if str(v) in ("cpu", "disk")})
    if any(p.device.type == "meta" for p in model.parameters()) or (spilled and _has_gpu_entries(hf_map)):
        raise InputError(
            "--device-map" if device_map is not None else "--device",
            f"the model does not fit: the device map offloads part of it ({', '.join(spilled) or 'meta device'}); "
            "HVPs need every parameter resident on a device (more GPUs or memory, a smaller --dtype, or --device cpu)",
        )
