"""What tracking lambda_max every 50 steps costs while training a small GPT (issue 17), against
PyHessian's cold-started power iteration (the anchor people call inside training loops).

Run:  python bench/bench_tracking.py [--steps 300] [--every 50] [--out bench/tracking.json]

Model: a transformers GPT-2 config (2 layers, d=128, 4 heads, context 64, vocab 256, eager attention,
dropout 0.1), ~0.46M parameters, float32, AdamW (lr 1e-3, weight decay 0.1), batches of 16 x 64 tokens
from a fixed random bigram language (so the loss falls), ``torch.set_num_threads(1)``.

Every setting trains the SAME run (same initial weights, same batches, same dropout masks: a tracker step
restores the RNG, so trajectories are identical, which the script checks) and times training steps and
tracker steps separately, interleaved in the same process; overhead = tracking time / training time, in
CPU seconds of this (single-threaded) process (robust to other jobs on a shared machine) and in wall
seconds. The tracking batch is one fixed training batch (the first), or its first ``k`` sequences.
Accuracy: every setting's lambda_max against a tight reference (cold Lanczos, tol 1e-6) on the same batch
and at the same weights (recomputed on that run's own weights when a tool changed the trajectory).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

VOCAB, CTX, BATCH, LR, WD = 256, 64, 16, 1e-3, 0.1


def make_model() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=VOCAB, n_positions=CTX, n_embd=128, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
    )
    cfg._attn_implementation = "eager"
    return GPT2LMHeadModel(cfg)


def make_batches(steps: int) -> list[dict[str, torch.Tensor]]:
    """Sequences from a fixed sparse random bigram model: learnable structure, so the loss falls."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(VOCAB, VOCAB, generator=g) * 3.0
    probs = torch.softmax(logits, dim=-1)
    out = []
    for _ in range(steps):
        x = torch.empty(BATCH, CTX, dtype=torch.long)
        x[:, 0] = torch.randint(0, VOCAB, (BATCH,), generator=g)
        for t in range(1, CTX):
            x[:, t] = torch.multinomial(probs[x[:, t - 1]], 1, generator=g)[:, 0]
        out.append({"input_ids": x, "labels": x})
    return out


def lm_loss(model, batch):
    return model(**batch).loss


def train(setting: dict, batches, every: int) -> dict:
    """One training run with tracking as ``setting`` says; times training and tracking separately."""
    from hessian_spectra.curvature.tracking import SharpnessTracker

    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    track_batch = batches[0] if setting.get("examples") is None else {
        k: v[: setting["examples"]] for k, v in batches[0].items()
    }  # fmt: skip
    tracker = None
    if setting["tool"] == "ours":
        tracker = SharpnessTracker(
            lm_loss, every, batches=[track_batch], optimizer=opt, warm_start=setting["warm"],
            tol=setting.get("tol", 1e-3), max_steps=setting.get("max_steps", 30), preconditioned=False,
        )  # fmt: skip
    train_s = track_s = train_cpu = track_cpu = 0.0
    records, losses, states = [], [], {}
    for step, batch in enumerate(batches):
        if step % every == 0 and setting["tool"] != "none":
            states[step] = {k: v.clone() for k, v in model.state_dict().items()}
            t0, c0 = time.perf_counter(), time.process_time()
            if tracker is not None:
                rec = tracker.measure(model, step=step)
                records.append({"step": step, "lambda_max": rec.lambda_max, "hvps": rec.hvps,
                                "residual": rec.lambda_max_residual, "converged": rec.converged})  # fmt: skip
            else:
                records.append({"step": step, **pyhessian_top(model, track_batch)})
            track_s += time.perf_counter() - t0
            track_cpu += time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        model.train()
        loss = lm_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        train_s += time.perf_counter() - t0
        train_cpu += time.process_time() - c0
        losses.append(float(loss.detach()))
    return {"train_s": train_s, "track_s": track_s, "train_cpu": train_cpu, "track_cpu": track_cpu,
            "records": records, "losses": losses, "states": states}  # fmt: skip


def pyhessian_top(model, batch) -> dict:
    """PyHessian 0.1 ``eigenvalues(top_n=1, tol=1e-3, maxIter=100)``, cold every call (as it is used)."""
    from pyhessian import hessian as PyHessian

    class Flat(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(input_ids=x).logits[:, :-1].reshape(-1, VOCAB)

    x = batch["input_ids"]
    y = x[:, 1:].reshape(-1)
    was = model.training
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = PyHessian(Flat(model), F.cross_entropy, data=(x, y), cuda=False)
        vals, _ = h.eigenvalues(maxIter=100, tol=1e-3, top_n=1)
    model.zero_grad(set_to_none=True)  # PyHessian leaves create_graph gradients in .grad
    model.train(was)
    return {"lambda_max": float(vals[0]), "hvps": None, "residual": None, "converged": None}


def reference(model_states, batches, examples) -> dict[int, float]:
    """Tight lambda_max (cold Lanczos, tol 1e-6) at every tracked step, on the tracking batch."""
    from hessian_spectra import HessianOperator, lanczos

    out = {}
    batch = batches[0] if examples is None else {k: v[:examples] for k, v in batches[0].items()}
    model = make_model()
    for step, state in model_states.items():
        model.load_state_dict(state)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = lanczos(
                HessianOperator(model, [batch], lm_loss), 1, which="largest", tol=1e-6, max_steps=200
            )
        out[step] = res.lambda_max
    return out


def snapshots(batches, every) -> dict[int, dict]:
    """Weights at every tracked step of the untracked run (identical to every tracked run)."""
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    states = {}
    for step, batch in enumerate(batches):
        if step % every == 0:
            states[step] = {k: v.clone() for k, v in model.state_dict().items()}
        model.train()
        loss = lm_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return states


SETTINGS = [
    {"name": "no tracking", "tool": "none"},
    {"name": "ours warm, 16 seqs", "tool": "ours", "warm": True},
    {"name": "ours cold, 16 seqs", "tool": "ours", "warm": False},
    {"name": "ours warm, 16 seqs, max 6 steps", "tool": "ours", "warm": True, "max_steps": 6},
    {"name": "ours warm, 4 seqs", "tool": "ours", "warm": True, "examples": 4},
    {"name": "ours warm, 2 seqs", "tool": "ours", "warm": True, "examples": 2},
    {"name": "ours warm, 2 seqs, tol 1e-2", "tool": "ours", "warm": True, "examples": 2, "tol": 1e-2},
    {"name": "ours warm, 16 seqs, tol 1e-2", "tool": "ours", "warm": True, "tol": 1e-2},
    {"name": "ours warm, 4 seqs, tol 1e-2", "tool": "ours", "warm": True, "examples": 4, "tol": 1e-2},
    {
        "name": "ours warm, 2 seqs, tol 1e-2, max 10",
        "tool": "ours",
        "warm": True,
        "examples": 2,
        "tol": 1e-2,
        "max_steps": 10,
    },
    {"name": "ours warm, 1 seq, tol 1e-2", "tool": "ours", "warm": True, "examples": 1, "tol": 1e-2},
    {"name": "PyHessian cold, 16 seqs", "tool": "pyhessian"},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--only", action="append", default=None, help="run settings whose name has this")
    args = parser.parse_args()
    settings = [
        s for s in SETTINGS if s["tool"] == "none" or not args.only or any(o in s["name"] for o in args.only)
    ]
    torch.set_num_threads(1)
    batches = make_batches(args.steps + 1)
    states = snapshots(batches, args.every)
    sizes = {s.get("examples") for s in settings if s["tool"] != "none"} | {None}
    refs = {ex: reference(states, batches, ex) for ex in sizes}
    rows = []
    base_losses = None
    for setting in settings:
        run = train(setting, batches, args.every)
        if base_losses is None:
            base_losses = run["losses"]
        same = run["losses"] == base_losses
        ref = refs[setting.get("examples")]
        if not same:  # the tool changed the run it measured: reference at that run's own weights
            ref = reference(run["states"], batches, setting.get("examples"))
        errs = [abs(r["lambda_max"] - ref[r["step"]]) / ref[r["step"]] for r in run["records"]]
        full = refs[None]
        vs_full = [abs(r["lambda_max"] - full[r["step"]]) / full[r["step"]] for r in run["records"]]
        hvps = [r["hvps"] for r in run["records"] if r["hvps"] is not None]
        row = {
            "setting": setting["name"], "train_s": run["train_s"], "track_s": run["track_s"],
            "overhead": run["track_s"] / run["train_s"], "train_cpu": run["train_cpu"],
            "track_cpu": run["track_cpu"], "overhead_cpu": run["track_cpu"] / run["train_cpu"],
            "measurements": len(run["records"]),
            "converged": [r["converged"] for r in run["records"]],
            "hvps": hvps, "max_rel_err": max(errs, default=None),
            "max_rel_diff_vs_full_batch": max(vs_full, default=None), "same_trajectory": same,
            "lambda_max": [r["lambda_max"] for r in run["records"]],
        }  # fmt: skip
        rows.append(row)
        err = row["max_rel_err"]
        full_err = row["max_rel_diff_vs_full_batch"]
        print(
            f"{row['setting']:33s} CPU train {row['train_cpu']:6.1f}s track {row['track_cpu']:6.1f}s = "
            f"{100 * row['overhead_cpu']:5.1f}% (wall {100 * row['overhead']:5.1f}%)  HVPs {hvps}  "
            f"max rel err {'-' if err is None else f'{err:.1e}'}  vs 16-seq lambda_max "
            f"{'-' if full_err is None else f'{full_err:.2f}'}  same trajectory {same}",
            flush=True,
        )
    print("reference lambda_max (16 seqs):", {k: round(v, 4) for k, v in refs[None].items()})
    print("final loss", statistics.mean(base_losses[-10:]), "first", statistics.mean(base_losses[:10]))
    if args.out:
        args.out.write_text(
            json.dumps({"rows": rows, "reference": {str(k): v for k, v in refs.items()}}, indent=1)
        )


if __name__ == "__main__":
    main()
