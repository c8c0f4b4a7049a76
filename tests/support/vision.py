"""A tiny image classifier folder and a folder of class sub-folders of images, built offline."""

from __future__ import annotations

import numpy as np
import torch


def tiny_vit_folder(path, labels=("cat", "dog", "eel")):
    """A 1-layer ViTForImageClassification (16x16 images, labels cat/dog/eel) with its image processor."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=16, patch_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=16, num_labels=len(labels), id2label=dict(enumerate(labels)),
                    label2id={n: i for i, n in enumerate(labels)})  # fmt: skip
    ViTForImageClassification(cfg).save_pretrained(path)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(path)
    return path


def class_folders(root, classes=("dog", "eel", "cat"), per_class=3, seed=0):
    """Random PNG/JPEG images in one sub-folder per class (sizes differ; a stray text file at the top)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    files = {}
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            arr = (rng.random((12 + i, 20, 3)) * 255).astype("uint8")
            f = root / c / (f"{i}.png" if i % 2 else f"{i}.jpg")
            Image.fromarray(arr).save(f)
            files[f] = c
    (root / "notes.txt").write_text("not an image, not in a class folder")
    return files
