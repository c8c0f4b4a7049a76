"""Per-call overhead on small models (issue 13 item 2): the HessianOperator's HVP rate against a bare
``torch.autograd.grad`` double-backward loop on the same model and batch, single vectors and batched.

    python bench/bench_overhead.py [--reps 200] [--threads 1]

Prints one line per model: bare loop ms/HVP (graph reused), operator matvec ms/HVP, ratio; bare batched
(``is_grads_batched``) ms/vector for k vectors and operator matmat ms/vector.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn


def _models():
    from hessian_spectra.analyses.demo import TinyCNN, TinyGPT, TinyMLP, markov_tokens, template_images
    from hessian_spectra.curvature.losses import cross_entropy

    torch.manual_seed(0)
    gpt = TinyGPT(d_model=16).double().eval()
    tokens = markov_tokens(1, 32, 16, 32, 0)
    cnn = TinyCNN().double().eval()
    images = [(x.double(), y) for x, y in template_images(1, 32, 4, 8, 0)]
    mlp = TinyMLP(inputs=16, hidden=24, depth=2).double().eval()
    g = torch.Generator().manual_seed(0)
    mlp_batch = (torch.randn(64, 16, generator=g, dtype=torch.float64), torch.randint(4, (64,), generator=g))
    return [("gpt", gpt, tokens, cross_entropy), ("cnn", cnn, images, cross_entropy),
            ("mlp", mlp, [mlp_batch], cross_entropy)]  # fmt: skip


def _time(fn, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def bench(name: str, model: nn.Module, batches, loss, reps: int, k: int) -> dict:
    from hessian_spectra.curvature.hessian import HessianOperator

    params = [p for p in model.parameters() if p.requires_grad]
    dim = sum(p.numel() for p in params)
    with torch.enable_grad():
        lv = loss(model, batches[0])
        grads = torch.autograd.grad(lv, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]

    def bare():
        torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)

    V = [torch.randn(k, *p.shape, dtype=p.dtype) for p in params]

    def bare_batched():
        torch.autograd.grad(grads, params, grad_outputs=V, retain_graph=True, is_grads_batched=True)

    op = HessianOperator(model, batches, loss, mode="reuse")
    x = torch.randn(dim, dtype=op.dtype)
    X = torch.randn(dim, k, dtype=op.dtype)
    t_bare = _time(bare, reps)
    t_op = _time(lambda: op.matvec(x), reps)
    t_bb = _time(bare_batched, max(1, reps // k)) / k
    t_om = _time(lambda: op.matmat(X), max(1, reps // k)) / k
    row = {"model": name, "dim": dim, "bare_ms": 1e3 * t_bare, "op_ms": 1e3 * t_op, "ratio": t_op / t_bare,
           "bare_batched_ms": 1e3 * t_bb, "op_matmat_ms": 1e3 * t_om, "k": k}  # fmt: skip
    print(f"{name:4s} dim {dim:6d}: bare {row['bare_ms']:.3f} ms/HVP, operator {row['op_ms']:.3f} ms/HVP "
          f"({row['ratio']:.2f}x); batched k={k}: bare {t_bb * 1e3:.3f} ms/vec, operator matmat "
          f"{t_om * 1e3:.3f} ms/vec", flush=True)  # fmt: skip
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for name, model, batches, loss in _models():
        bench(name, model, batches, loss, args.reps, args.k)


if __name__ == "__main__":
    main()
