"""A small built-in checkpoint so every command can be tried without downloading anything."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def example_state_dict(
    seed: int = 0, *, layers: int = 4, d_model: int = 128, vocab: int = 512
) -> dict[str, torch.Tensor]:
    """A GPT-style state dict (fused QKV, MLP, norms, embeddings) with trained-looking spectra.

    Weights are iid Gaussian plus a few planted spikes that grow with depth, so power-law alphas,
    Marchenko-Pastur spikes and condition numbers differ visibly from layer to layer.
    """
    gen = torch.Generator().manual_seed(seed)
    d_ff = 4 * d_model

    def matrix(rows: int, cols: int, spikes: int) -> torch.Tensor:
        w = torch.randn(rows, cols, generator=gen) / cols**0.5
        for j in range(spikes):
            u = torch.randn(rows, 1, generator=gen)
            v = torch.randn(1, cols, generator=gen)
            w += (3.0 + 2.0 * j) * (u @ v) / (u.norm() * v.norm())
        return w

    sd: dict[str, torch.Tensor] = {
        "wte.weight": matrix(vocab, d_model, 2),
        "wpe.weight": 0.02 * torch.randn(64, d_model, generator=gen),
    }
    for i in range(layers):
        p = f"h.{i}."
        sd[p + "ln_1.weight"] = torch.ones(d_model)
        sd[p + "ln_1.bias"] = torch.zeros(d_model)
        sd[p + "attn.in_proj_weight"] = matrix(3 * d_model, d_model, i)
        sd[p + "attn.in_proj_bias"] = torch.zeros(3 * d_model)
        sd[p + "attn.out_proj.weight"] = matrix(d_model, d_model, i)
        sd[p + "ln_2.weight"] = torch.ones(d_model)
        sd[p + "mlp.fc_in.weight"] = matrix(d_ff, d_model, 1 + i)
        sd[p + "mlp.fc_out.weight"] = matrix(d_model, d_ff, 1 + i)
    sd["ln_f.weight"] = torch.ones(d_model)
    return {k: v.contiguous() for k, v in sd.items()}


def write_example_checkpoint(folder: str | Path, seed: int = 0) -> Path:
    """Write the example as ``model.safetensors`` + ``config.json`` in ``folder``; return the folder."""
    from hessian_spectra.io import atomic_write_bytes, atomic_write_text
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = example_state_dict(seed)
    data = save(sd, metadata={"format": "pt", "source": "hessian-spectra example", "seed": str(seed)})
    atomic_write_bytes(folder / "model.safetensors", data)  # honours the umask (save_file makes 0600)
    config = {
        "model_type": "spectra-example",
        "num_attention_heads": 4,
        "hidden_size": 128,
        "num_hidden_layers": 4,
    }
    atomic_write_text(folder / "config.json", json.dumps(config, indent=2) + "\n")
    return folder
