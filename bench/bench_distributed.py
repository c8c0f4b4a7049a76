"""Benchmark hessian_spectra.parallel (torch.distributed): 1 vs N torchrun processes (gloo on CPU, NCCL on GPU).

Run:  python bench/bench_distributed.py [--nprocs 1 2] [--repeats 2] [--device auto]

Each configuration is a fresh ``torchrun --nproc-per-node N`` job running this file with ``--worker``;
rank 0 writes timings (compute only: process start and imports excluded) and the results. Measured:

* block-parallel block SLQ: a 6-layer tanh MLP (12 parameter blocks, 21k parameters, float64),
  4 probes x 30 steps per block, blocks assigned to ranks by estimated cost;
* data-parallel block SLQ: the same run with the 8 batches sharded over ranks (H v all-reduced);
* matrix-parallel weights probe on all-MiniLM-L6-v2 (fp64 spectra of its 39 matrices).

The driver then checks that every N gives the same numbers as N = 1 (max relative difference of the
SLQ nodes/weights, identical weights report apart from provenance) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


# ====================================================================== worker (under torchrun)
def _mlp_case(seed: int = 0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    width, layers = 64, 6
    mods: list = [nn.Linear(16, width), nn.Tanh()]
    for _ in range(layers - 2):
        mods += [nn.Linear(width, width), nn.Tanh()]
    mods += [nn.Linear(width, 10)]
    model = nn.Sequential(*mods).to(torch.float64)
    g = torch.Generator().manual_seed(seed + 1)
    batches = [
        (torch.randn(32, 16, generator=g, dtype=torch.float64), torch.randint(0, 10, (32,), generator=g))
        for _ in range(8)
    ]
    return model, batches


def _canon_weights(report: dict) -> str:
    d = {k: v for k, v in report.items() if k != "provenance"}
    return json.dumps(json.loads(json.dumps(d)), sort_keys=True)


def worker(args: argparse.Namespace) -> int:
    import torch
    from hessian_spectra import parallel as D
    from hessian_spectra.curvature.block_builders import parameter_blocks
    from hessian_spectra.curvature.hessian import HessianOperator
    from hessian_spectra.curvature.losses import cross_entropy
    from hessian_spectra.krylov.slq import slq_lockstep
    from hessian_spectra.weights.plan import WeightsSettings

    torch.set_num_threads(1)
    info = D.init_distributed(device=args.device, timeout_s=600)
    dev = D.resolve_device(args.device)
    model, batches = _mlp_case()
    out: dict = {"world_size": info.world_size, "backend": info.backend, "device": str(dev), "times": {}}
    slq_kw = {"num_probes": 4, "steps": 30, "seed": 0}

    def timed(name, fn):
        D.check_all_ok(None, f"{name} start")  # start together
        t = time.perf_counter()
        res = fn()
        D.check_all_ok(None, f"{name} end")  # the slowest rank decides
        out["times"][name] = time.perf_counter() - t
        return res

    # block-parallel: every rank holds all batches, blocks split by cost
    full = HessianOperator(model.to(dev), batches, cross_entropy, dtype=torch.float64)
    blocks = parameter_blocks(full)
    res, plan = timed("block_parallel_slq", lambda: D.block_spectra(full, blocks, method="slq", **slq_kw))
    out["bp_nodes"] = [r.nodes.tolist() for r in res]
    out["bp_weights"] = [r.weights.tolist() for r in res]
    out["bp_imbalance"] = plan.imbalance
    out["bp_rank_seconds"] = list(plan.rank_seconds)
    # data-parallel: batches sharded, every rank runs all blocks on the reduced H v
    dop = D.data_parallel_hessian(model, batches, cross_entropy, device=dev, dtype=torch.float64)
    res = timed("data_parallel_block_slq", lambda: slq_lockstep(dop.block_diagonal(blocks), **slq_kw))
    out["dp_nodes"] = [r.nodes.tolist() for r in res]
    out["dp_weights"] = [r.weights.tolist() for r in res]
    # matrix-parallel weights probe
    from bench_weights import minilm_dir

    report = timed(
        "weights_probe",
        lambda: D.analyze_weights_distributed(minilm_dir(), WeightsSettings(seed=0), device=dev),
    )
    d = report.to_dict()
    out["weights_sha256"] = hashlib.sha256(_canon_weights(d).encode()).hexdigest()
    out["weights_matrices"] = len(d["matrices"])
    out["weights_rank_seconds"] = d["provenance"]["distributed"]["rank_seconds"]
    if D.is_main_process():
        Path(args.out).write_text(json.dumps(out))
    D.shutdown_distributed()
    return 0


# ====================================================================== driver
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_job(nproc: int, device: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
        cmd += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
        cmd += [str(Path(__file__).resolve()), "--worker", "--out", str(out), "--device", device]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE))
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(
                f"torchrun with {nproc} process(es) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        res = json.loads(out.read_text())
        res["job_wall"] = wall
        return res


def _max_rel(a, b) -> float:
    import numpy as np

    worst = 0.0
    for x, y in zip(a, b, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        worst = max(worst, float(np.max(np.abs(x - y)) / max(float(np.max(np.abs(x))), 1e-300)))
    return worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda (NCCL when cuda)")
    ap.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    runs: dict[int, list[dict]] = {n: [] for n in args.nprocs}
    for _ in range(args.repeats):
        for n in args.nprocs:  # interleaved, so machine load drifts affect all N alike
            runs[n].append(run_job(n, args.device))
    base = runs[args.nprocs[0]][0]
    names = ["block_parallel_slq", "data_parallel_block_slq", "weights_probe"]
    print(
        f"device {base['device']}, backend per N: "
        + ", ".join(f"N={n}: {runs[n][0]['backend']}" for n in runs)
    )
    print(f"load average before/after: {os.getloadavg()[0]:.2f} (1 min)")
    print(
        "| task | "
        + " | ".join(f"N={n} median s" for n in args.nprocs)
        + " | speedup | max rel diff vs N=1 |"
    )
    print("|---|" + "---|" * (len(args.nprocs) + 2))
    for name in names:
        med = {n: statistics.median(r["times"][name] for r in runs[n]) for n in args.nprocs}
        last = args.nprocs[-1]
        other = runs[last][0]
        if name == "weights_probe":
            diff = "identical" if other["weights_sha256"] == base["weights_sha256"] else "DIFFERENT"
        else:
            key = "bp" if name.startswith("block") else "dp"
            d = max(_max_rel(base[f"{key}_nodes"], other[f"{key}_nodes"]),
                    _max_rel(base[f"{key}_weights"], other[f"{key}_weights"]))  # fmt: skip
            diff = f"{d:.1e}"
        cells = " | ".join(f"{med[n]:.2f}" for n in args.nprocs)
        print(f"| {name} | {cells} | {med[args.nprocs[0]] / med[last]:.2f}x | {diff} |")
    print(
        "job wall (incl. start/imports): "
        + ", ".join(f"N={n}: {statistics.median(r['job_wall'] for r in runs[n]):.1f}s" for n in args.nprocs)
    )
    last = runs[args.nprocs[-1]][0]
    print(f"block estimated imbalance N={args.nprocs[-1]}: {last['bp_imbalance']:.3f}, measured rank seconds "
          f"{last['bp_rank_seconds']}; weights rank seconds: {last['weights_rank_seconds']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
