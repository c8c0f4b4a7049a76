"""GGUF files written the way llama.cpp's converter writes them, from a HF-layout Llama state dict.

The converter's steps are repeated here independently of the reader under test: HF names -> llama.cpp
names, Q/K rows permuted with ``LlamaModel.permute`` (copied from convert_hf_to_gguf.py), the numpy array
handed to ``GGUFWriter`` (which stores the dimensions reversed), quantized with ``gguf.quants.quantize``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

HEADS, KV_HEADS, HIDDEN, FFN, VOCAB, LAYERS = 4, 2, 64, 128, 96, 2

_TOP = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_BLOCK = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}  # fmt: skip


def llama_state_dict(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict]:
    """A tiny HF LlamaForCausalLM state dict (4 query heads, 2 KV heads: GQA) and its config dict."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=HIDDEN, intermediate_size=FFN, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                      num_hidden_layers=LAYERS, vocab_size=VOCAB, max_position_embeddings=64, tie_word_embeddings=False)  # fmt: skip
    model = LlamaForCausalLM(cfg)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for k in sd:  # random norms, so a missing or swapped norm cannot pass unnoticed
        if k.endswith("norm.weight"):
            sd[k] = 1 + 0.1 * torch.randn(sd[k].shape)
    return sd, cfg.to_dict()


def converter_permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py, ``LlamaModel.permute``, verbatim in numpy."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def gguf_name(hf: str) -> str:
    if hf in _TOP:
        return _TOP[hf]
    parts = hf.split(".")  # model.layers.N.<module...>.weight
    return f"blk.{parts[2]}.{_BLOCK['.'.join(parts[3:-1])]}.{parts[-1]}"


def write_llama_gguf(
    sd: dict[str, torch.Tensor], path: str | Path, *, qtype: str = "F32", arch: str = "llama"
) -> Path:
    """Write ``sd`` as a llama.cpp GGUF: 2-D weights as ``qtype`` (F32, F16, Q8_0, Q4_0, ...), norms F32."""
    import gguf

    path = Path(path)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(LAYERS)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_context_length(64)
    writer.add_vocab_size(VOCAB)
    for hf, t in sd.items():
        arr = t.detach().float().numpy()
        if arch == "llama" and hf.endswith("q_proj.weight"):
            arr = converter_permute(arr, HEADS, HEADS)
        elif arch == "llama" and hf.endswith("k_proj.weight"):
            arr = converter_permute(arr, HEADS, KV_HEADS)
        qt = gguf.GGMLQuantizationType[qtype] if arr.ndim == 2 else gguf.GGMLQuantizationType.F32
        if qt == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(gguf_name(hf), np.ascontiguousarray(arr, dtype=np.float32))
        elif qt == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(gguf_name(hf), np.ascontiguousarray(arr, dtype=np.float16))
        else:
            writer.add_tensor(gguf_name(hf), gguf.quants.quantize(arr, qt), raw_dtype=qt)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
