"""Image classification from a folder of class sub-folders, preprocessed by the checkpoint's own image
processor: the pixels are the processor's, the labels follow config.label2id, the loss is the model's."""

from __future__ import annotations

import json

import pytest
import torch
from hessian_spectra.analyses.workloads import load_hf_workload
from hessian_spectra.errors import InputError
from support.vision import class_folders as _images
from support.vision import tiny_vit_folder as _vit_folder

PIL = pytest.importorskip("PIL")


def test_images_labels_and_loss_are_the_checkpoints_own(tmp_path):
    from PIL import Image
    from transformers import AutoImageProcessor

    folder = _vit_folder(tmp_path / "vit")
    files = _images(tmp_path / "data")
    work = load_hf_workload(folder, tmp_path / "data", batch_size=4, max_batches=0, seed=3)
    assert work.inputs["task"] == "image-classification"
    assert work.inputs["classes"] == {"cat": 0, "dog": 1, "eel": 2} and "label2id" in work.inputs["labels"]
    assert work.inputs["images"] == 9 and [len(b["labels"]) for b in work.batches] == [4, 4, 1]
    # every image once, each with its folder's label; pixels exactly what the processor gives
    proc = AutoImageProcessor.from_pretrained(folder)
    seen = []
    for batch in work.batches:
        for px, lbl in zip(batch["pixel_values"], batch["labels"], strict=True):
            match = [
                f
                for f in files
                if torch.equal(
                    proc(images=[Image.open(f).convert("RGB")], return_tensors="pt")["pixel_values"][0], px
                )
            ]
            assert len(match) == 1 and work.inputs["classes"][files[match[0]]] == int(lbl)
            seen.append(match[0])
    assert sorted(seen) == sorted(files)
    with torch.no_grad():
        logits = work.model(pixel_values=work.batches[0]["pixel_values"]).logits
        expected = torch.nn.functional.cross_entropy(logits, work.batches[0]["labels"])
        assert float(work.model(**work.batches[0]).loss) == pytest.approx(float(expected), rel=1e-6)


def test_folder_names_outside_label2id_use_sorted_order_and_too_many_classes_refused(tmp_path):
    folder = _vit_folder(tmp_path / "vit")
    _images(tmp_path / "data", classes=("b_class", "a_class"), per_class=2)
    work = load_hf_workload(folder, tmp_path / "data", batch_size=2, max_batches=1)
    assert (
        work.inputs["classes"] == {"a_class": 0, "b_class": 1}
        and "sorted folder order" in work.inputs["labels"]
    )
    _images(tmp_path / "many", classes=("a", "b", "c", "d"), per_class=1)
    with pytest.raises(InputError, match="4 class folders but the model has 3 labels"):
        load_hf_workload(folder, tmp_path / "many")


def test_unreadable_image_and_missing_processor_are_one_line_errors(tmp_path):
    folder = _vit_folder(tmp_path / "vit")
    _images(tmp_path / "data", per_class=1)
    bad = tmp_path / "data" / "cat" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(InputError) as err:
        load_hf_workload(folder, tmp_path / "data", max_batches=0)
    assert str(bad) in str(err.value) and "not a readable image" in str(err.value)
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(InputError, match="no image processor"):
        load_hf_workload(folder, tmp_path / "data")
    with pytest.raises(InputError, match="one sub-folder of images per class"):
        load_hf_workload(_vit_folder(tmp_path / "vit2"), tmp_path / "data" / "cat" / "0.jpg")
    json.loads((folder / "config.json").read_text())  # the folder itself was left intact
