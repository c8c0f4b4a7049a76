"""Image classification from a folder of class sub-folders, preprocessed by the checkpoint's own image
processor (``AutoImageProcessor``; images opened with Pillow; torchvision is not needed).

Labels: the sub-folder names mapped through ``config.label2id`` when every name is a label of the model,
otherwise the sorted sub-folder order 0..K-1 (refused when K exceeds the model's number of labels). The
images used are a seeded random sample of ``batch_size * max_batches`` (all of them when ``max_batches`` is 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hessian_spectra.analyses.workloads.check import _line
from hessian_spectra.analyses.workloads.data import list_images
from hessian_spectra.errors import InputError

__all__ = ["image_labels", "load_image_processor", "image_batches"]


def image_labels(classes: list[str], config: Any, folder: Path) -> tuple[dict[str, int], str]:
    """Folder name -> class index, and how it was decided."""
    label2id = getattr(config, "label2id", None) or {}
    num_labels = int(getattr(config, "num_labels", 0) or len(label2id) or 0)
    if classes and all(c in label2id for c in classes):
        return {c: int(label2id[c]) for c in classes}, "folder names mapped through config.label2id"
    if num_labels and len(classes) > num_labels:
        raise InputError(folder, f"{len(classes)} class folders but the model has {num_labels} labels")
    missing = next((c for c in classes if c not in label2id), None)
    why = f"'{missing}' is not in config.label2id" if label2id else "the config has no label2id"
    return {c: i for i, c in enumerate(classes)}, f"sorted folder order 0..{len(classes) - 1} ({why})"


def load_image_processor(model_dir: Path, transformers: Any) -> Any:
    from hessian_spectra.analyses.workloads.hf_model import quiet_transformers

    if not (model_dir / "preprocessor_config.json").is_file():
        raise InputError(model_dir, "no image processor in the model directory (preprocessor_config.json)")
    try:
        with quiet_transformers(transformers):
            return transformers.AutoImageProcessor.from_pretrained(model_dir)
    except Exception as err:
        raise InputError(
            model_dir, f"unusable image processor ({type(err).__name__}: {_line(err)})"
        ) from None


def _open(path: Path) -> Any:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as err:  # UnidentifiedImageError, DecompressionBombError, truncated files
        raise InputError(path, f"not a readable image ({type(err).__name__}: {_line(err)})") from None


def image_batches(
    folder: Path, processor: Any, config: Any, *, batch_size: int, max_batches: int, seed: int
) -> tuple[list[dict[str, torch.Tensor]], dict[str, Any]]:
    """``{"pixel_values", "labels"}`` batches and what was used (classes, label rule, image count)."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise InputError(folder, "image data needs Pillow: pip install 'hessian-spectra[vision]'") from None
    items, classes = list_images(folder)
    labels, rule = image_labels(classes, config, folder)
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    if max_batches:
        order = order[: batch_size * max_batches]
    batches = []
    for i in range(0, len(order), batch_size):
        chunk = [items[j] for j in order[i : i + batch_size]]
        images = [_open(path) for path, _ in chunk]
        try:
            pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        except Exception as err:
            raise InputError(
                folder, f"the image processor failed ({type(err).__name__}: {_line(err)})"
            ) from None
        batches.append({"pixel_values": pixels, "labels": torch.tensor([labels[c] for _, c in chunk])})
    info = {
        "classes": {c: labels[c] for c in classes},
        "labels": rule,
        "images": len(order),
        "images_found": len(items),
    }
    return batches, info
