"""How a stored tensor becomes the matrices whose spectra we report.

The decision (:func:`plan_tensor`) uses only metadata (name, shape, dtype, module type, config), so the
whole inventory exists before any data is read; :func:`extract_matrices` then applies the recorded
recipe to the loaded tensor. Every matrix has rows = outputs and columns = inputs. Rules, in order:

1. **Skipped, with the reason stated**: tensors the reader marked unreadable (``TensorMeta.skip``: sparse,
   meta, quantized torch, nested, self-overlapping views, above the size cap) and optimizer state; complex
   and other non-float tensors (integer/bool buffers); scalars; 1-D tensors ("1-D (bias/norm)"); empty
   tensors; matrices whose smaller side is below ``min_dim`` (default 2).
2. **Leading singleton dims** of tensors with 3 or more dims are squeezed when what remains is at most
   2-D: ViT ``cls_token`` (1, 1, E) becomes 1-D (skipped), ``pos_embed`` (1, N, E) an (N, E) matrix.
3. **2-D weights** are used as stored (PyTorch ``nn.Linear`` is (out, in)). Raw ``nn.Parameter``s and
   embeddings are included; kind ``"embedding"`` for token/position/segment embeddings, patch/cls tokens
   and an ``lm_head`` tied to the embedding (``config["tie_word_embeddings"]``).
4. **HF ``Conv1D``** (GPT-2 family) stores (in, out). It is recognised by module type ``Conv1D`` for live
   modules, and for files by ``config["model_type"]`` in :data:`CONV1D_MODEL_TYPES` together with a
   leaf named ``c_attn``/``c_proj``/``c_fc``/``q_attn``; the matrix is transposed to (out, in).
5. **Fused QKV** (``in_proj_weight``, ``c_attn``, ``qkv``, ``Wqkv``, ``qkv_proj``, ``W_pack``,
   ``query_key_value``) is analysed whole (kind ``"qkv_fused"``) and, when the head layout is known
   and ``split_qkv`` is on, also as ``"{key}:q"``, ``":k"``, ``":v"`` (kinds ``"q"``/``"k"``/``"v"``):
   contiguous [Q; K; V] row blocks, sized from the config (``num_attention_heads``,
   ``num_key_value_heads``, ``head_dim``/hidden size; GQA aware) or as equal thirds when
   rows == 3 * cols; ``query_key_value`` of ``gpt_neox``/``bloom`` is per-head interleaved
   (heads, 3, head_dim). Other ``query_key_value`` layouts (Falcon, ChatGLM) are not guessed: the
   tensor is analysed whole and the note says why.
6. **MoE expert stacks**: a 3-D tensor whose name contains "expert", shape (E, a, b), gives one (a, b)
   matrix per expert named ``"{key}[expert=i]"`` (kind ``"expert"``), as stored.
7. **Convolution kernels** (out, in/groups, *k) (any other tensor with 3+ dims; 3-D is read as a conv1d
   kernel): ``conv_rule="flatten"`` (default) reshapes to (out, in * prod(k)), the matrix mapping an
   input patch to the output channels. ``"per_position"`` gives one (out, in) matrix per kernel
   position (``"{key}[pos=i]"``; WeightWatcher's slicing, without its halving of Conv2D eigenvalues);
   ``"skip"`` skips kernels. ``ConvTranspose`` kernels (in, out, *k) get their first two dims swapped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from hessian_spectra.checkpoints.base import TensorMeta
from hessian_spectra.checkpoints.qkv_layout import (
    INTERLEAVED_QKV_MODEL_TYPES,
    attention_layout,
    qkv_split,
)
from hessian_spectra.checkpoints.qkv_layout import config_value as _cfg
from hessian_spectra.checkpoints.qkv_layout import leaf as _leaf
from hessian_spectra.checkpoints.qkv_layout import model_type as _model_type
from hessian_spectra.checkpoints.reader import Checkpoint
from hessian_spectra.weights.roles import tensor_role

if TYPE_CHECKING:  # numpy arrays (the safetensors fast path) never need torch
    import torch

__all__ = [
    "CONV1D_MODEL_TYPES",
    "INTERLEAVED_QKV_MODEL_TYPES",
    "ExtractOptions",
    "TensorRecord",
    "MatrixView",
    "plan_tensor",
    "extract_matrices",
    "plan_checkpoint",
    "iter_matrices",
    "attention_layout",
]

CONV1D_MODEL_TYPES = frozenset({"gpt2", "openai-gpt", "imagegpt", "decision_transformer"})
CONV1D_LEAVES = frozenset({"c_attn", "c_proj", "c_fc", "q_attn"})
CONV_RULES = ("flatten", "per_position", "skip")


@dataclass(frozen=True)
class ExtractOptions:
    """Knobs of the extraction rules (see the module docstring)."""

    min_dim: int = 2
    conv_rule: str = "flatten"
    split_qkv: bool = True

    def __post_init__(self) -> None:
        if self.conv_rule not in CONV_RULES:
            raise ValueError(f"conv_rule must be one of {CONV_RULES}, got {self.conv_rule!r}")
        if self.min_dim < 1:
            raise ValueError("min_dim must be >= 1")


@dataclass(frozen=True)
class TensorRecord:
    """One inventory row: what a tensor is, whether it is analysed, and how it becomes matrices.

    ``ops`` and ``split`` are the recipe :func:`extract_matrices` replays (documented vocabulary:
    ops from ``squeeze``, ``transpose``, ``swap01``, ``flatten``, ``per_position``, ``experts``;
    split ``()``, ``("contiguous", q_rows, kv_rows)`` or ``("interleaved", heads, head_dim)``).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    status: str  # "analysed" | "skipped"
    reason: str  # why skipped ("" when analysed)
    matrices: tuple[str, ...]
    kind: str  # linear | embedding | conv | qkv_fused | expert | vector | scalar | buffer | optimizer_state | unreadable
    role: str = "other"
    matrix_shapes: tuple[tuple[int, int], ...] = ()
    matrix_kinds: tuple[str, ...] = ()
    note: str = ""
    ops: tuple[str, ...] = ()
    split: tuple = field(default=())
    key: str | None = None  # where the tensor sits in the file, when that differs from ``name``
    storage: str | None = None  # how it is stored, when that differs from ``dtype`` (GGUF ``Q8_0``)

    @property
    def analysed(self) -> bool:
        return self.status == "analysed"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["matrices"] = list(self.matrices)
        d["matrix_shapes"] = [list(s) for s in self.matrix_shapes]
        d["matrix_kinds"] = list(self.matrix_kinds)
        d["ops"] = list(self.ops)
        d["split"] = list(self.split)
        return d


@dataclass(frozen=True)
class MatrixView:
    """One 2-D matrix (rows = outputs, cols = inputs) cut from a tensor; often a view sharing memory."""

    name: str
    tensor_name: str
    kind: str
    matrix: torch.Tensor | np.ndarray
    note: str = ""
    role: str = "other"

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.matrix.shape)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tensor_name": self.tensor_name,
            "kind": self.kind,
            "shape": list(self.matrix.shape),
            "dtype": str(self.matrix.dtype).removeprefix("torch."),
            "note": self.note,
            "role": self.role,
        }


# ----------------------------------------------------------------------------------------------------


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat")) and not dtype.startswith("float4")


def _is_hf_conv1d(name: str, module_type: str | None, config: dict | None) -> bool:
    if module_type is not None:
        return module_type == "Conv1D"
    return (
        _model_type(config) in CONV1D_MODEL_TYPES and _leaf(name) in CONV1D_LEAVES and name.endswith("weight")
    )


def _skip(base: dict, reason: str, kind: str) -> TensorRecord:
    return TensorRecord(**base, status="skipped", reason=reason, matrices=(), kind=kind)


def plan_tensor(
    meta: TensorMeta,
    *,
    config: dict | None = None,
    module_type: str | None = None,
    options: ExtractOptions = ExtractOptions(),
) -> TensorRecord:
    """Decide from metadata alone whether and how a tensor becomes matrices (see module docstring)."""
    name, shape, dtype = meta.name, tuple(int(s) for s in meta.shape), meta.dtype
    role = tensor_role(name, config, module_type)
    base = {
        "name": name,
        "shape": shape,
        "dtype": dtype,
        "role": role,
        "key": meta.key,
        "storage": meta.storage,
    }
    if meta.skip is not None:
        return _skip(
            base, meta.skip, "optimizer_state" if meta.skip.startswith("optimizer") else "unreadable"
        )
    if dtype.startswith("complex"):
        return _skip(base, f"complex dtype {dtype}: spectra of complex weights are not analysed", "buffer")
    if not _is_float(dtype):
        return _skip(base, f"non-float dtype {dtype} (buffer/index)", "buffer")
    if len(shape) == 0:
        return _skip(base, "scalar", "scalar")
    if math.prod(shape) == 0:
        return _skip(base, f"empty tensor {shape}", "vector" if len(shape) == 1 else "linear")
    ops: list[str] = []
    notes: list[str] = []
    eff = shape
    if len(shape) >= 3 and shape[0] == 1:
        stripped = shape
        while len(stripped) > 1 and stripped[0] == 1:
            stripped = stripped[1:]
        if len(stripped) <= 2:
            eff = stripped
            ops.append("squeeze")
            notes.append(f"leading singleton dims squeezed {shape} -> {eff}")
    if len(eff) == 1:
        extra = f" after squeezing {shape}" if ops else ""
        return _skip(base, f"1-D (bias/norm){extra}", "vector")

    names: list[str] = []
    shapes: list[tuple[int, int]] = []
    kinds: list[str] = []
    split: tuple = ()
    lname = name.lower()
    if len(eff) == 2:
        rows, cols = eff
        if _is_hf_conv1d(name, module_type, config):
            ops.append("transpose")
            rows, cols = cols, rows
            notes.append("HF Conv1D stores (in, out): transposed to (out, in)")
        tied = role == "lm_head" and _cfg(config, "tie_word_embeddings") is True
        kind = "embedding" if role in ("embedding", "position_embedding") or tied else "linear"
        if role == "qkv":
            kind = "qkv_fused"
        names, shapes, kinds = [name], [(rows, cols)], [kind]
        if min(rows, cols) < options.min_dim:
            return _skip(
                base, f"too small: matrix {rows}x{cols} has a side below min_dim={options.min_dim}", kind
            )
        if kind == "qkv_fused" and options.split_qkv:
            split, why = qkv_split(name, rows, cols, config)
            if split:
                sizes = (
                    (split[1], split[2], split[2]) if split[0] == "contiguous" else (split[1] * split[2],) * 3
                )
                if min(min(sizes), cols) < options.min_dim:
                    split, why = (), f"Q/K/V parts below min_dim={options.min_dim}; analysed whole only"
                else:
                    for part, rows_p in zip("qkv", sizes, strict=True):
                        names.append(f"{name}:{part}")
                        shapes.append((rows_p, cols))
                        kinds.append(part)
            notes.append(why)
        elif kind == "qkv_fused":
            notes.append("QKV split disabled (split_qkv=False)")
    elif len(eff) == 3 and "expert" in lname:
        n_exp, a, b = eff
        kind = "expert"
        ops.append("experts")
        if min(a, b) < options.min_dim:
            return _skip(
                base, f"too small: expert matrices {a}x{b} have a side below min_dim={options.min_dim}", kind
            )
        names = [f"{name}[expert={i}]" for i in range(n_exp)]
        shapes, kinds = [(a, b)] * n_exp, [kind] * n_exp
        notes.append(f"{n_exp} experts, one ({a}, {b}) matrix each, as stored")
    else:
        kind = "conv"
        if options.conv_rule == "skip":
            return _skip(base, "convolution kernel (conv_rule='skip')", kind)
        if module_type is not None and module_type.startswith("ConvTranspose"):
            ops.append("swap01")
            eff = (eff[1], eff[0], *eff[2:])
            notes.append("ConvTranspose stores (in, out, *k): first two dims swapped")
        elif len(eff) == 3 and not (module_type or "").startswith("Conv"):
            notes.append("3-D tensor read as a conv1d kernel (out, in, k)")
        out, cin, ksize = eff[0], eff[1], math.prod(eff[2:])
        if options.conv_rule == "flatten":
            ops.append("flatten")
            names, shapes, kinds = [name], [(out, cin * ksize)], [kind]
            notes.append(f"conv kernel {eff} flattened to ({out}, {cin * ksize}) = (out, in*prod(k))")
        else:
            ops.append("per_position")
            names = [f"{name}[pos={i}]" for i in range(ksize)]
            shapes, kinds = [(out, cin)] * ksize, [kind] * ksize
            notes.append(f"conv kernel {eff}: one ({out}, {cin}) matrix per kernel position")
        if min(shapes[0]) < options.min_dim:
            r, c = shapes[0]
            return _skip(base, f"too small: matrix {r}x{c} has a side below min_dim={options.min_dim}", kind)
    return TensorRecord(
        **base,
        status="analysed",
        reason="",
        matrices=tuple(names),
        kind=kind,
        matrix_shapes=tuple(shapes),
        matrix_kinds=tuple(kinds),
        note="; ".join(notes),
        ops=tuple(ops),
        split=split,
    )


def extract_matrices(
    record: TensorRecord,
    tensor: torch.Tensor | np.ndarray,
    *,
    config: dict | None = None,
    module_type: str | None = None,
    options: ExtractOptions | None = None,
) -> list[MatrixView]:
    """Apply ``record``'s recipe to the loaded tensor; [] for skipped tensors. Views where possible.

    The record already holds every decision (``ops``, ``split``), so ``config``/``module_type``/
    ``options`` are accepted only for call-site symmetry with :func:`plan_tensor` and are not used.
    A numpy array gets the same recipe with numpy views (no torch import).
    """
    del config, module_type, options
    if not record.analysed:
        return []
    if tuple(tensor.shape) != record.shape:
        raise ValueError(f"{record.name}: tensor shape {tuple(tensor.shape)} != planned {record.shape}")
    is_np = isinstance(tensor, np.ndarray)
    w = tensor if is_np else tensor.detach()
    mats: list[Any] = []
    for op in record.ops:
        if op == "squeeze":
            while w.ndim > 1 and w.shape[0] == 1:
                w = w[0]
        elif op == "transpose":
            w = w.T
        elif op == "swap01":
            w = w.swapaxes(0, 1) if is_np else w.transpose(0, 1)
        elif op == "flatten":
            w = w.reshape(w.shape[0], -1)
        elif op == "per_position":
            k = math.prod(w.shape[2:])
            w3 = w.reshape(w.shape[0], w.shape[1], k)
            mats = [w3[:, :, i] for i in range(k)] if is_np else list(w3.unbind(dim=2))
        elif op == "experts":
            mats = list(w) if is_np else list(w.unbind(dim=0))
        else:  # pragma: no cover - the vocabulary is closed
            raise ValueError(f"unknown op {op!r}")
    if not mats:
        mats = [w]
        if record.split:
            mode, a, b = record.split
            if mode == "contiguous":
                mats += [w[:a], w[a : a + b], w[a + b : a + 2 * b]]
            else:  # interleaved (heads, 3, head_dim) along rows
                g = w.reshape(a, 3, b, w.shape[1])
                mats += [g[:, i].reshape(a * b, w.shape[1]) for i in range(3)]
    role_of = {"q": "q", "k": "k", "v": "v"}
    views = [
        MatrixView(n, record.name, kd, m, record.note, role_of.get(kd, record.role))
        for n, kd, m in zip(record.matrices, record.matrix_kinds, mats, strict=True)
    ]
    for v, s in zip(views, record.matrix_shapes, strict=True):
        if v.shape != tuple(s):  # pragma: no cover - guards plan/extract drift
            raise AssertionError(f"{v.name}: extracted {v.shape} != planned {s}")
    return views


def plan_checkpoint(ckpt: Checkpoint, options: ExtractOptions = ExtractOptions()) -> list[TensorRecord]:
    """The inventory: one record per tensor of ``ckpt`` (metadata only, no tensor data read)."""
    return [
        plan_tensor(ckpt.meta(n), config=ckpt.config, module_type=ckpt.module_types.get(n), options=options)
        for n in ckpt.names()
    ]


def iter_matrices(ckpt: Checkpoint, records: list[TensorRecord] | None = None) -> Iterator[MatrixView]:
    """Load analysed tensors one at a time and yield their matrices (memory ~ one tensor)."""
    for rec in plan_checkpoint(ckpt) if records is None else records:
        if rec.analysed:
            views = extract_matrices(rec, ckpt.load(rec.name))
            while views:  # pop so that this generator keeps no reference to an already-yielded view
                yield views.pop(0)
