"""What a report was computed from: file hashes (background thread, joined), token counts, generated inputs."""

from __future__ import annotations

import hashlib

import torch
from hessian_spectra.analyses.report.inputs import (
    finish_inputs,
    folder_files,
    generated_input,
    hash_files,
    token_counts,
)


def test_hashes_are_sha256_and_a_vanished_file_is_listed_not_fatal(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 3_000_000)
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "skip").write_text("hidden")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("hello")
    files = folder_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in files] == ["a.bin", "sub/b.txt"]
    job = hash_files([*files, tmp_path / "gone"], tmp_path)
    out = finish_inputs({"model": {"hashes": job}, "n": [1, job]})
    got = out["model"]["hashes"]
    assert out["n"][1] is got and not job._thread.is_alive()  # the hashing thread is joined
    by = {f["name"]: f for f in got["files"]}
    assert (
        by["a.bin"]["sha256"] == hashlib.sha256(b"x" * 3_000_000).hexdigest()
        and by["a.bin"]["size_bytes"] == 3_000_000
    )
    assert by["sub/b.txt"]["sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert by["gone"]["sha256"] is None and by["gone"]["error"]
    assert got["total_bytes"] == 3_000_005 and got["hash_seconds"] >= 0


def test_token_counts_follow_the_attention_mask_and_labels():
    ids = torch.ones(2, 5, dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    labels = torch.tensor([[-100, 3, 4, -100, -100], [1, 2, 3, 4, -100]])
    assert token_counts([{"input_ids": ids, "attention_mask": mask, "labels": labels}]) == {
        "sequences": 2, "tokens": 8, "loss_tokens": 6}  # fmt: skip
    assert token_counts([(torch.zeros(3, 2), torch.zeros(3))])["tokens"] is None  # not a token batch


def test_generated_inputs_say_so():
    g = generated_input("demo data", by="spectra demo", seed=3, path=None, settings={"steps": 5})
    assert g == {"kind": "generated", "created_by_tool": True, "what": "demo data", "by": "spectra demo",
                 "seed": 3, "kept_at": None, "settings": {"steps": 5}}  # fmt: skip
