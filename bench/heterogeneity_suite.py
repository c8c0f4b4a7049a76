"""The architectures and learnable synthetic tasks of the heterogeneity validation suite (issue 11).

Seven models built from code at initialisation, 40-110k parameters each: BERT (masked LM), GPT-2 (causal
LM), ViT (images) from transformers configs with eager attention; a ResNet (BatchNorm), a VGG-style CNN,
an MLP and an MLP-Mixer in plain torch. Two tasks with real structure that optimizers do not solve in a
few hundred steps:

* text (vocabulary 32): a fixed random sparse source mixing a per-sequence topic, a bigram and a trigram
  table (``markov2_tokens``), so a bag of the context, the previous token and the one before all pay;
  GPT-2 predicts the next token, BERT the 15% masked tokens;
* images: 3 x 16 x 16 class-conditional textures: white noise filtered by one of 10 fixed random 5x5
  colour kernels (a shared base plus a class part), scaled to unit variance, plus 0.06 x a smooth colour
  template of the class; the texture (local second-order statistics) carries most of the label, the
  template a weak linear cue. ResNet, VGG and MLP get torchvision's He initialisation (``_he_init``).

``build(name, seed)`` returns a :class:`SuiteCase`: model (float32, eval mode), loss ``(model, batch)``,
``hessian_batches`` (what the Hessian is taken on) and ``train_batches`` / ``eval_batches`` for the
optimizer comparison. ``seed`` sets the initialisation and the data sample; the sources (the Markov
chain, the teacher) are fixed so every seed solves the same task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ARCHITECTURES", "FAMILY", "SuiteCase", "build", "markov2_tokens", "teacher_images"]

VOCAB, SEQ, TOPICS = 32, 32, 8
IMAGE, CHANNELS, CLASSES = 16, 3, 10

#: model name -> family the claim is about ("transformer" should come out heterogeneous, "cnn"/"mlp" not;
#: the MLP-Mixer is reported as it comes out).
FAMILY = {
    "bert": "transformer",
    "gpt2": "transformer",
    "vit": "transformer",
    "mixer": "mixer",
    "mlp": "mlp",
    "resnet": "cnn",
    "vgg": "cnn",
}
ARCHITECTURES = tuple(FAMILY)


# ------------------------------------------------------------------------------------------------ data
def _source(vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fixed text source: 8 topics (6 tokens each, random probabilities), a sparse bigram table (3
    successors per token) and a sparse trigram table (2 successors per pair)."""
    g = torch.Generator().manual_seed(2024)

    def sparse(rows: int, k: int) -> torch.Tensor:
        t = torch.zeros(rows, vocab)
        t.scatter_add_(
            1,
            torch.randint(vocab, (rows, k), generator=g),
            torch.softmax(torch.randn(rows, k, generator=g), -1),
        )
        return t

    return sparse(TOPICS, 6), sparse(vocab, 3), sparse(vocab * vocab, 2).view(vocab, vocab, vocab)


def markov2_tokens(n: int, seq: int, seed: int, vocab: int = VOCAB) -> torch.Tensor:
    """``(n, seq + 1)`` token sequences: each picks a topic k, then
    P(x_t | x_{t-2}, x_{t-1}, k) = 0.5 topic_k + 0.3 bigram(x_{t-1}) + 0.2 trigram(x_{t-2}, x_{t-1}).
    The topic can be read from any bag of the sequence's tokens (uniform attention at initialisation
    already sees it), the bigram from the previous token, the trigram only by attending two back."""
    topic, big, tri = _source(vocab)
    g = torch.Generator().manual_seed(10_000 + seed)
    k = torch.randint(TOPICS, (n,), generator=g)
    out = torch.empty(n, seq + 1, dtype=torch.long)
    out[:, :2] = torch.multinomial(topic[k], 2, replacement=True, generator=g)
    for t in range(2, seq + 1):
        p = 0.5 * topic[k] + 0.3 * big[out[:, t - 1]] + 0.2 * tri[out[:, t - 2], out[:, t - 1]]
        out[:, t] = torch.multinomial(p, 1, generator=g).squeeze(1)
    return out


def _texture_source() -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed source of the image task: per class a 5x5 colour filter (a shared base plus a class part:
    the classes' textures) and a smooth colour template (a weak linear cue)."""
    g = torch.Generator().manual_seed(777)
    base = torch.randn(CHANNELS, CHANNELS, 5, 5, generator=g)
    kernels = base[None] + 0.7 * torch.randn(CLASSES, CHANNELS, CHANNELS, 5, 5, generator=g)
    t = F.avg_pool2d(torch.randn(CLASSES, CHANNELS, IMAGE + 6, IMAGE + 6, generator=g), 7, stride=1)
    t = t - t.mean((1, 2, 3), keepdim=True)
    return kernels, t / t.flatten(1).std(1).view(CLASSES, 1, 1, 1)


def teacher_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)``: balanced labels; image = white noise filtered by its class's texture kernel
    (scaled to unit variance per image) + 0.06 x its class's smooth template."""
    kernels, templates = _texture_source()
    g = torch.Generator().manual_seed(20_000 + seed)
    y = torch.randint(CLASSES, (n,), generator=g)
    noise = torch.randn(n, CHANNELS, IMAGE + 4, IMAGE + 4, generator=g)
    x = torch.empty(n, CHANNELS, IMAGE, IMAGE)
    for c in range(CLASSES):
        idx = (y == c).nonzero().squeeze(1)
        if idx.numel():
            x[idx] = F.conv2d(noise[idx], kernels[c])
    x = x / x.flatten(1).std(1).view(n, 1, 1, 1) + 0.06 * templates[y]
    return x, y


def _he_init(model: nn.Module) -> nn.Module:
    """torchvision's CNN initialisation (convolutions He-normal over fan-out, biases 0, norms 1/0; linear
    layers He-normal over fan-in): PyTorch's default uniform init shrinks the signal ~6x in variance per
    ReLU layer, which stalls SGD on a deep un-normalised net (a VGG here learned nothing in 400 steps)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)
    return model


# ------------------------------------------------------------------------------------------------ models
def _hf_quiet():
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def gpt2_model() -> nn.Module:
    t = _hf_quiet()
    cfg = t.GPT2Config(
        vocab_size=VOCAB, n_positions=SEQ, n_embd=48, n_layer=2, n_head=4, n_inner=192,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager",
    )  # fmt: skip
    return t.GPT2LMHeadModel(cfg)


def bert_model() -> nn.Module:
    t = _hf_quiet()
    cfg = t.BertConfig(
        vocab_size=VOCAB + 1, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=192,
        max_position_embeddings=SEQ, type_vocab_size=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )  # fmt: skip
    return t.BertForMaskedLM(cfg)


def vit_model() -> nn.Module:
    t = _hf_quiet()
    cfg = t.ViTConfig(
        image_size=IMAGE, patch_size=4, num_channels=CHANNELS, hidden_size=48, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=192, num_labels=CLASSES, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, attn_implementation="eager",
    )  # fmt: skip
    return t.ViTForImageClassification(cfg)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """A ResNet-10-style CNN: stem conv, 4 basic blocks (16, 16, 32, 32 channels), global pool, ``fc``."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(CHANNELS, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(_BasicBlock(width, width, 1), _BasicBlock(width, width, 1))
        self.layer2 = nn.Sequential(_BasicBlock(width, 2 * width, 2), _BasicBlock(2 * width, 2 * width, 1))
        self.fc = nn.Linear(2 * width, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(x.mean((2, 3)))


class VGG(nn.Module):
    """VGG-style: [conv-conv-pool] x 2 (16, 32 channels), then a 2-layer classifier (no normalisation)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(CHANNELS, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv4 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc = nn.Linear(64, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = F.max_pool2d(F.relu(self.conv4(F.relu(self.conv3(x)))), 2)
        return self.fc(F.relu(self.fc1(x.flatten(1))))


class MLP(nn.Module):
    """768 -> 96 -> 96 -> 96 -> 10 with ReLU (``layers.{i}``, ``classifier``)."""

    def __init__(self, hidden: int = 96, depth: int = 3) -> None:
        super().__init__()
        dims = [CHANNELS * IMAGE * IMAGE] + [hidden] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.classifier = nn.Linear(hidden, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.classifier(x)


class _MixerLayer(nn.Module):
    def __init__(self, tokens: int, dim: int, token_hidden: int, channel_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(
            nn.Linear(tokens, token_hidden), nn.GELU(), nn.Linear(token_hidden, tokens)
        )
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp = nn.Sequential(
            nn.Linear(dim, channel_hidden), nn.GELU(), nn.Linear(channel_hidden, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class Mixer(nn.Module):
    """MLP-Mixer: 4x4 patches (16 tokens), width 64, 4 layers (token MLP 32, channel MLP 128), ``head``."""

    def __init__(self, dim: int = 64, depth: int = 4) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(CHANNELS, dim, 4, stride=4)
        self.layers = nn.ModuleList(_MixerLayer(16, dim, 32, 2 * dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x).mean(1))


# ------------------------------------------------------------------------------------------------ losses
def image_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    out = model(x)
    logits = out.logits if hasattr(out, "logits") else out
    return F.cross_entropy(logits, y)


def vit_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(pixel_values=x).logits, y)


def lm_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Mean cross-entropy over the labelled tokens (GPT-2: labels are the inputs, shifted inside HF)."""
    return model(**batch).loss


# ------------------------------------------------------------------------------------------------ cases
@dataclass(frozen=True, eq=False)
class SuiteCase:
    """One architecture at initialisation with its loss and data."""

    name: str
    family: str
    model: nn.Module
    loss: Callable[[nn.Module, Any], torch.Tensor]
    hessian_batches: list[Any]
    train_batches: list[Any]
    eval_batches: list[Any]

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def _lm_batches(name: str, tokens: torch.Tensor, batch: int, seed: int) -> list[dict[str, torch.Tensor]]:
    out = []
    g = torch.Generator().manual_seed(30_000 + seed)
    for i in range(0, tokens.shape[0], batch):
        seq = tokens[i : i + batch, :SEQ]
        if name == "gpt2":
            out.append({"input_ids": seq, "labels": seq.clone()})
        else:  # BERT: 15% of positions masked (id VOCAB = [MASK]), labels only there
            mask = torch.rand(seq.shape, generator=g) < 0.15
            mask[:, 0] |= ~mask.any(1)  # at least one target per sequence
            labels = torch.where(mask, seq, torch.full_like(seq, -100))
            out.append({"input_ids": torch.where(mask, torch.full_like(seq, VOCAB), seq), "labels": labels})
    return out


def build(
    name: str,
    seed: int = 0,
    *,
    train_steps: int = 400,
    eval_batches: int = 4,
    batch: int = 32,
    hessian_examples: int = 16,
) -> SuiteCase:
    """Architecture ``name`` at initialisation (seed ``seed``) with its data: one Hessian batch of
    ``hessian_examples`` examples, ``train_steps`` distinct training batches (one pass, so the training
    loss measures optimisation, not memorisation) and ``eval_batches`` held-out batches of ``batch``."""
    if name not in FAMILY:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(FAMILY)}")
    torch.manual_seed(seed)
    n = 1 + train_steps + eval_batches
    if name in ("gpt2", "bert"):
        model = gpt2_model() if name == "gpt2" else bert_model()
        data = _lm_batches(name, markov2_tokens(n * batch, SEQ, seed), batch, seed)
        loss = lm_loss
    else:
        model = {"vit": vit_model, "resnet": ResNet, "vgg": VGG, "mlp": MLP, "mixer": Mixer}[name]()
        if name in ("resnet", "vgg", "mlp"):
            model = _he_init(model)
        x, y = teacher_images(n * batch, seed)
        data = [(x[i : i + batch], y[i : i + batch]) for i in range(0, n * batch, batch)]
        loss = vit_loss if name == "vit" else image_loss
    model.eval()
    first = data[0]
    hessian = (
        {k: v[:hessian_examples] for k, v in first.items()}
        if isinstance(first, dict)
        else tuple(t[:hessian_examples] for t in first)
    )
    return SuiteCase(
        name=name, family=FAMILY[name], model=model, loss=loss, hessian_batches=[hessian],
        train_batches=data[1 : 1 + train_steps], eval_batches=data[1 + train_steps :],
    )  # fmt: skip
