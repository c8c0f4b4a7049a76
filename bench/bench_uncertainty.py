"""Error bars that cover: probe count vs trace error and interval coverage, against exact Hessians.

Run:  python bench/bench_uncertainty.py [--seeds 200] [--cases mlp,cnn-bn,sdpa-lm,gpt2] [--probes 3,5,10,20]
      [--steps 20] [--matvecs 30,60,120] [--skip-slq] [--skip-trace] [--skip-overhead] [--json out.json]

Truth: the float64 Hessian of each tiny zoo model (tests/support/models.py: MLP 419 parameters, CNN with
BatchNorm 159, hand-written SDPA transformer 835, HF GPT-2 1112) by forward-over-reverse autodiff
(tests/support/oracles.py), and its per-tensor diagonal blocks; every estimator runs on these matrices as
dense operators (the HVP itself is tested elsewhere), so errors are the estimators' alone.

1. SLQ (full model, and block SLQ in lockstep over the per-tensor blocks) at each probe count: relative
   RMSE of the plain trace (mean of n v^T A v) and of the Krylov-deflated trace, and how often the nominal
   95% intervals cover the exact trace; the smoothed density's mass below zero likewise; the bootstrapped
   negative-curvature share. Blocks whose first Krylov space spans them are exact and listed apart.
2. Hutchinson vs Hutch++ vs the automatic estimator at equal matvecs: relative RMSE, coverage, what auto chose.
3. Overhead of the deflation on a real Hessian operator (a 2-hidden-layer MLP, ~100k parameters).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from hessian_spectra.krylov.linop import DenseOperator  # noqa: E402
from hessian_spectra.krylov.trace import hutchinson, hutchpp, trace_estimate  # noqa: E402
from support.coverage import Tally, case_targets, slq_coverage  # noqa: E402


def _pct(x: float) -> str:
    return "-" if not np.isfinite(x) else f"{100 * x:.1f}"


def slq_table(cases: list[str], probes: list[int], steps: int, seeds: int) -> tuple[list[str], list[dict]]:
    rows, raw = [], []
    head = (
        "| model | probes | full: rel. RMSE plain / deflated | full: coverage plain / deflated | blocks (est./exact) "
        "| blocks: median rel. RMSE plain / deflated | blocks: coverage plain / deflated (min block) "
        "| mass<0 coverage (min) | neg. share coverage | s |"
    )
    rows += [head, "|" + "---|" * 10]
    for case in cases:
        full, blocks = case_targets(case, min_dim=2)
        for n_p in probes:
            t0 = time.perf_counter()
            tally = slq_coverage(full, blocks, range(seeds), probes=n_p, steps=steps, negative_share=n_p >= 3)
            secs = time.perf_counter() - t0
            names = [b.name for b in blocks]
            est = [n for n in names if not tally.exact_only(n, "trace")]
            rel = {
                s: [
                    tally.rmse(n, s) / max(abs(t.trace), 1e-12)
                    for n, t in zip(names, blocks, strict=True)
                    if n in est
                ]
                for s in ("trace-plain", "trace")
            }
            cov_min = min((tally.coverage("trace", [n]) for n in est), default=float("nan"))
            mass_min = min(tally.coverage("mass<0", [n]) for n in ["full", *names])
            r = {
                "case": case, "probes": n_p, "steps": steps, "seeds": seeds, "seconds": secs,
                "full_rel_rmse_plain": tally.rmse("full", "trace-plain") / abs(full.trace),
                "full_rel_rmse_deflated": tally.rmse("full", "trace") / abs(full.trace),
                "full_cov_plain": tally.coverage("trace-plain", ["full"]), "full_cov_deflated": tally.coverage("trace", ["full"]),
                "blocks_estimated": len(est), "blocks_exact": len(names) - len(est),
                "blocks_rel_rmse_plain": statistics.median(rel["trace-plain"]) if est else float("nan"),
                "blocks_rel_rmse_deflated": statistics.median(rel["trace"]) if est else float("nan"),
                "blocks_cov_plain": tally.coverage("trace-plain", names), "blocks_cov_deflated": tally.coverage("trace", est),
                "blocks_cov_deflated_min": cov_min, "per_block_cov": {n: tally.coverage("trace", [n]) for n in est},
                "mass_cov": tally.coverage("mass<0"), "mass_cov_min": mass_min,
                "negshare_cov": tally.coverage("negative-share"),
            }  # fmt: skip
            raw.append(r)
            rows.append(
                f"| {case} | {n_p} | {_pct(r['full_rel_rmse_plain'])}% / {_pct(r['full_rel_rmse_deflated'])}% "
                f"| {_pct(r['full_cov_plain'])} / {_pct(r['full_cov_deflated'])} | {len(est)}/{len(names) - len(est)} "
                f"| {_pct(r['blocks_rel_rmse_plain'])}% / {_pct(r['blocks_rel_rmse_deflated'])}% "
                f"| {_pct(r['blocks_cov_plain'])} / {_pct(r['blocks_cov_deflated'])} ({_pct(cov_min)}) "
                f"| {_pct(r['mass_cov'])} ({_pct(mass_min)}) | {_pct(r['negshare_cov'])} | {secs:.0f} |"
            )
            print(rows[-1], flush=True)
    return rows, raw


def trace_table(cases: list[str], matvecs: list[int], seeds: int) -> tuple[list[str], list[dict]]:
    head = (
        "| model | target (dim) | matvecs | rel. RMSE Hutchinson / Hutch++ / auto | coverage Hutchinson / Hutch++ / auto "
        "| auto chose |"
    )
    rows, raw = [head, "|" + "---|" * 6], []
    for case in cases:
        full, blocks = case_targets(case, min_dim=64)
        for target in [full, *blocks]:
            for m in matvecs:
                if target.dim <= m:
                    continue
                t = Tally()
                chose: dict[str, int] = {}
                for seed in range(seeds):
                    op = DenseOperator(target.matrix)
                    for key, r in (
                        ("hutchinson", hutchinson(op, num_probes=m, seed=seed)),
                        ("hutch++", hutchpp(op, num_matvecs=m, seed=seed)),
                        ("auto", trace_estimate(op, num_matvecs=m, seed=seed)),
                    ):
                        t.add(target, key, r.interval(), target.trace)
                        if key == "auto":
                            chose[r.method] = chose.get(r.method, 0) + 1
                rel = [
                    t.rmse(target.name, k) / max(abs(target.trace), 1e-12)
                    for k in ("hutchinson", "hutch++", "auto")
                ]
                cov = [t.coverage(k, [target.name]) for k in ("hutchinson", "hutch++", "auto")]
                raw.append({"case": case, "target": target.name, "dim": target.dim, "matvecs": m, "rel_rmse": rel,
                            "coverage": cov, "auto_chose": chose})  # fmt: skip
                pick = ", ".join(f"{k} {v}" for k, v in sorted(chose.items()))
                rows.append(
                    f"| {case} | `{target.name}` ({target.dim}) | {m} | {' / '.join(_pct(x) + '%' for x in rel)} "
                    f"| {' / '.join(_pct(x) for x in cov)} | {pick} |"
                )
                print(rows[-1], flush=True)
    return rows, raw


def overhead(repeats: int = 5) -> dict:
    """Block SLQ with and without the trace deflation on a real Hessian operator, side by side."""
    from hessian_spectra.curvature.block_builders import parameter_blocks
    from hessian_spectra.curvature.hessian import HessianOperator
    from hessian_spectra.krylov.slq import slq_lockstep
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 64))
    x, y = torch.randn(512, 64), torch.randint(0, 64, (512,))
    op = HessianOperator(model, [(x, y)], lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]))
    bd = op.block_diagonal(parameter_blocks(op))
    times = {True: [], False: []}
    for _ in range(repeats):
        for flag in (True, False):
            t0 = time.perf_counter()
            slq_lockstep(bd, num_probes=10, steps=20, seed=0, deflate_trace=flag)
            times[flag].append(time.perf_counter() - t0)
    on, off = statistics.median(times[True]), statistics.median(times[False])
    return {
        "dim": op.dim,
        "seconds_deflated": on,
        "seconds_plain": off,
        "ratio": on / off,
        "repeats": repeats,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--cases", default="mlp,cnn-bn,sdpa-lm,gpt2")
    ap.add_argument("--probes", default="3,5,10,20")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--matvecs", default="30,60,120")
    ap.add_argument("--skip-slq", action="store_true")
    ap.add_argument("--skip-trace", action="store_true")
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cases = args.cases.split(",")
    out: dict = {"command": " ".join(["python", *sys.argv]), "torch": torch.__version__}
    if not args.skip_slq:
        rows, out["slq"] = slq_table(cases, [int(p) for p in args.probes.split(",")], args.steps, args.seeds)
        print("\n".join(rows))
    if not args.skip_trace:
        rows, out["trace"] = trace_table(cases, [int(m) for m in args.matvecs.split(",")], args.seeds)
        print("\n".join(rows))
    if not args.skip_overhead:
        out["overhead"] = overhead()
        print(json.dumps(out["overhead"]))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
