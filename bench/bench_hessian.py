"""Benchmark the Hessian engine against PyHessian 0.1, hessian-eigenthings 1.0.0a5 and curvlinops 3.0.1.

Run:  python bench/bench_hessian.py [--repeats 5] [--step-runs 5] [--skip-e2e] [--skip-memory]

Model: a 2-layer pre-LN transformer LM (d=256, 4 heads, MLP 4d, vocab 1000, untied head; ~2.1M
parameters in 30 tensors), attention written out (softmax(QK^T)V: twice differentiable for every tool),
eval mode, ONE fixed batch of 4 x 128 = 512 tokens, float32, ``torch.set_num_threads(1)``.

Everything timed runs in ONE process; the repeated measurements are interleaved (every tool once per
round) and medians are reported, so ratios are measured side by side on a noisy shared machine. Peak
memory is measured per tool in a fresh subprocess: peak RSS (VmHWM, reset through /proc/self/clear_refs
after setup) minus RSS after setup (model + batch built, nothing else).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent

VOCAB, D, HEADS, LAYERS, SEQ, BATCH = 1000, 256, 4, 2, 128, 4


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(D)
        self.qkv = nn.Linear(D, 3 * D)
        self.proj = nn.Linear(D, D)
        self.ln2 = nn.LayerNorm(D)
        self.fc1 = nn.Linear(D, 4 * D)
        self.fc2 = nn.Linear(4 * D, D)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        hd = D // HEADS
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, HEADS, hd).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = torch.softmax(att.masked_fill(mask, float("-inf")), dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, D))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyGPT(nn.Module):
    """Returns flat logits ``(B*T, vocab)`` so a plain ``nn.CrossEntropyLoss`` fits every tool's API."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, D)
        self.pos = nn.Parameter(torch.randn(SEQ, D) * 0.02)
        self.blocks = nn.ModuleList([Block() for _ in range(LAYERS)])
        self.lnf = nn.LayerNorm(D)
        self.head = nn.Linear(D, VOCAB)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        mask = torch.ones(t, t, dtype=torch.bool, device=idx.device).triu(1)
        x = self.emb(idx) + self.pos[:t]
        for blk in self.blocks:
            x = blk(x, mask)
        return self.head(self.lnf(x)).reshape(-1, VOCAB)


def setup() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = TinyGPT().eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=g)
    return model, (ids[:, :-1].contiguous(), ids[:, 1:].reshape(-1).contiguous())


def ce_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def params_of(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def unit_vector(n: int, seed: int) -> torch.Tensor:
    v = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def split_like(v: torch.Tensor, params) -> list[torch.Tensor]:
    out, a = [], 0
    for p in params:
        out.append(v[a : a + p.numel()].view_as(p))
        a += p.numel()
    return out


@dataclass
class BareHVP:
    """The floor every reuse-type tool is compared with: one ``autograd.grad(grads, params, v)`` on a
    first-order graph built once (``v``: a fixed unit vector, ``vs``: its per-parameter views)."""

    params: list[torch.Tensor]
    v: torch.Tensor
    vs: list[torch.Tensor]
    grads: tuple[torch.Tensor, ...]

    def __call__(self):
        return torch.autograd.grad(self.grads, self.params, self.vs, retain_graph=True)


def bare_hvp(model: nn.Module, batch) -> BareHVP:
    params = params_of(model)
    v = unit_vector(sum(p.numel() for p in params), 0)
    grads = torch.autograd.grad(ce_loss(model, batch), params, create_graph=True)
    return BareHVP(params, v, split_like(v, params), grads)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ====================================================================== per-HVP costs
def hvp_costs(model, batch, repeats: int) -> dict[str, list[float]]:
    from curvlinops import HessianLinearOperator
    from hessian_eigenthings import HessianOperator as ETHessian
    from hessian_spectra.curvature.hessian import HessianOperator
    from hessian_spectra.krylov.lanczos import lanczos
    from pyhessian import hessian as PyHessian

    bare = bare_hvp(model, batch)
    params, v, vs = bare.params, bare.v, bare.vs
    x, y = batch

    def gradient():
        return torch.autograd.grad(ce_loss(model, batch), params)

    ours = HessianOperator(model, [batch], ce_loss, mode="reuse", attention="off")
    ours.matvec(v)  # build and keep the graph once (construction cost is measured end to end)
    short, long = 6, 12

    def lanczos_run(m: int, policy: str = "partial") -> Callable[[], object]:
        def run() -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lanczos(ours, 1, which="largest", tol=1e-300, max_steps=m, seed=0, reorthogonalize=policy)

        return run

    pyh = PyHessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=False)

    def pyh_hvp():
        return torch.autograd.grad(
            pyh.gradsH, pyh.params, vs, retain_graph=True
        )  # its hessian_vector_product

    et = ETHessian(model, [batch], ce_loss)
    cl = HessianLinearOperator(model, nn.CrossEntropyLoss(), params, [(x, y)], check_deterministic=False)

    runs: dict[str, Callable[[], object]] = {
        "gradient": gradient,
        "bare reused HVP": bare,
        "ours matvec": lambda: ours.matvec(v),
        f"ours Lanczos {short} steps": lanczos_run(short),
        f"ours Lanczos {long} steps": lanczos_run(long),
        f"ours Lanczos {short} steps full": lanczos_run(short, "full"),
        f"ours Lanczos {long} steps full": lanczos_run(long, "full"),
        "PyHessian HVP": pyh_hvp,
        "eigenthings HVP": lambda: et.matvec(v),
        "curvlinops HVP": lambda: cl @ v,
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():  # warm-up
        fn()
    for _ in range(repeats):
        for k, fn in runs.items():
            times[k].append(timed(fn))
    # marginal cost of one step (steps 7-12: matvec + reorthogonalisation against 7-12 vectors), free of
    # the one-off start-up (random start vector, basis allocation, final eigensolve)
    a, b = times.pop(f"ours Lanczos {short} steps"), times.pop(f"ours Lanczos {long} steps")
    times["ours Lanczos step (marginal)"] = [(tb - ta) / (long - short) for ta, tb in zip(a, b, strict=True)]
    times[f"ours Lanczos step (whole {long}-step run / {long})"] = [tb / long for tb in b]
    a, b = times.pop(f"ours Lanczos {short} steps full"), times.pop(f"ours Lanczos {long} steps full")
    times["ours Lanczos step, full reorth (marginal)"] = [
        (tb - ta) / (long - short) for ta, tb in zip(a, b, strict=True)
    ]
    times[f"ours Lanczos step, full reorth (whole {long}-step run / {long})"] = [tb / long for tb in b]
    model.zero_grad(set_to_none=True)  # PyHessian leaves create_graph gradients in .grad
    return times


# ====================================================================== Lanczos step vs bare HVP, paired
def lanczos_step_pairs(model, batch, runs: int, steps: int = 12) -> dict[str, dict[str, list[float]]]:
    """One Lanczos step against one bare reused-graph HVP, paired inside the same run.

    ``lanczos``'s ``progress`` callback (called after each step) times a bare HVP right there; a step is
    the time between two callbacks minus that bare HVP: the Ritz check of the previous step, ``vector()``,
    our matvec and the recurrence (plus reorthogonalisation when due). Each step is divided by the bare
    HVP next to it, so slow phases of a shared machine hit both sides of a ratio. Step 1 (start-up:
    start vector, allocations) is dropped; steps 2..``steps`` of ``runs`` runs per policy are kept.
    """
    from hessian_spectra.curvature.hessian import HessianOperator
    from hessian_spectra.krylov.lanczos import lanczos

    bare = bare_hvp(model, batch)
    v = bare.v

    ours = HessianOperator(model, [batch], ce_loss, mode="reuse", attention="off")
    ours.matvec(v)
    bare()
    out: dict[str, dict[str, list[float]]] = {}
    for _ in range(runs):
        for policy in ("partial", "full"):
            rec = out.setdefault(policy, {"ratio": [], "step": [], "bare": []})
            mark = [time.perf_counter()]

            def progress(step: int, _budget: int, rec=rec, mark=mark) -> None:
                t = time.perf_counter()
                bare()
                hvp = time.perf_counter() - t
                if step > 1:
                    rec["step"].append(t - mark[0])
                    rec["bare"].append(hvp)
                    rec["ratio"].append((t - mark[0]) / hvp)
                mark[0] = time.perf_counter()

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lanczos(ours, 1, which="largest", tol=1e-300, max_steps=steps, seed=0,
                        reorthogonalize=policy, progress=progress)  # fmt: skip
    return out


# ====================================================================== block-diagonal matvec
def block_costs(model, batch, repeats: int) -> dict[str, list[float]]:
    from curvlinops import HessianLinearOperator
    from hessian_eigenthings import HessianOperator as ETHessian
    from hessian_spectra.curvature.hessian import HessianOperator

    bare = bare_hvp(model, batch)
    params, v, vs, grads = bare.params, bare.v, bare.vs, bare.grads
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    x, y = batch

    ours = HessianOperator(model, [batch], ce_loss, mode="reuse", attention="off")
    bd = ours.block_diagonal()
    bvs = [v[ours.param_slice(b.param)] for b in bd.blocks]
    from hessian_spectra.curvature.block_builders import layer_blocks

    bl = ours.block_diagonal(layer_blocks(ours))  # 2 composite layer blocks + 6 outside any layer
    lvs = [ours.take(b, v) for b in bl.blocks]
    ours.matvec(v)

    def paper():  # "Why Transformers Need Adam": one full HVP per block with v zero outside the block
        out = []
        for i in range(len(params)):
            padded = [t if j == i else torch.zeros_like(t) for j, t in enumerate(vs)]
            out.append(torch.autograd.grad(grads, params, padded, retain_graph=True)[i])
        return out

    et_ops = [ETHessian(model, [batch], ce_loss, param_filter=(lambda nm, _p, k=k: nm == k)) for k in names]

    def eigenthings():  # param_filter: one operator (graph rebuilt, pruned to the block) per tensor
        return [op.matvec(t.reshape(-1)) for op, t in zip(et_ops, vs, strict=True)]

    cl = HessianLinearOperator(
        model,
        nn.CrossEntropyLoss(),
        params,
        [(x, y)],
        block_sizes=[1] * len(params),
        check_deterministic=False,
    )
    runs: dict[str, Callable[[], object]] = {
        "bare reused HVP": bare,
        "ours block-diagonal": lambda: bd.matvec_many(bvs),
        "ours block-diagonal, --blocks layer (8 blocks)": lambda: bl.matvec_many(lvs),
        "paper (zero-padded full HVPs)": paper,
        "eigenthings param_filter": eigenthings,
        "curvlinops block_sizes": lambda: cl @ v,
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():
        fn()
    for _ in range(repeats):
        for k, fn in runs.items():
            times[k].append(timed(fn))
    return times


# ====================================================================== top eigenvalue end to end
def top_eigenvalue(tool: str, model, batch, *, steps_hint: int | None = None) -> dict:
    """Operator construction + solve for the top eigenvalue at 1e-3 relative; returns value/HVPs/time."""
    x, y = batch
    t0 = time.perf_counter()
    if tool == "ours":
        from hessian_spectra.curvature.hessian import HessianOperator
        from hessian_spectra.krylov.lanczos import lanczos

        op = HessianOperator(model, [batch], ce_loss, attention="off")
        r = lanczos(op, 1, which="largest", tol=1e-3, seed=0)
        out = {"value": r.lambda_max, "hvps": r.num_matvecs, "converged": r.converged}
    elif tool == "reference":
        from hessian_spectra.curvature.hessian import HessianOperator
        from hessian_spectra.krylov.lanczos import lanczos

        op = HessianOperator(model, [batch], ce_loss, attention="off")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = lanczos(op, 1, which="largest", tol=1e-12, max_steps=100, seed=1)
        out = {"value": r.lambda_max, "hvps": r.num_matvecs, "converged": r.converged,
               "residual": r.top_residuals[0]}  # fmt: skip
    elif tool == "PyHessian":
        from pyhessian import hessian as PyHessian

        torch.manual_seed(0)
        h = PyHessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=False)
        count = [0]
        ph = sys.modules["pyhessian.hessian"]  # the module (the package exports a class of that name)

        orig = ph.hessian_vector_product

        def counted(*a, **k):
            count[0] += 1
            return orig(*a, **k)

        ph.hessian_vector_product = counted
        try:
            vals, _ = h.eigenvalues(maxIter=100, tol=1e-3, top_n=1)
        finally:
            ph.hessian_vector_product = orig
        model.zero_grad(set_to_none=True)
        out = {"value": float(vals[0]), "hvps": count[0], "converged": count[0] < 100}
    elif tool == "eigenthings":
        from hessian_eigenthings import HessianOperator as ETHessian
        from hessian_eigenthings import lanczos as et_lanczos

        op = ETHessian(model, [batch], ce_loss)
        m = int(steps_hint or 20)
        r = et_lanczos(op, k=1, max_iter=m, tol=1e-3, which="LA", seed=0)
        out = {"value": float(r.eigenvalues[0]), "hvps": m, "converged": bool(r.converged.all())}
    elif tool == "curvlinops":
        from curvlinops import HessianLinearOperator
        from scipy.sparse.linalg import eigsh

        params = params_of(model)
        H = HessianLinearOperator(model, nn.CrossEntropyLoss(), params, [(x, y)])  # default checks on
        Hs = H.to_scipy()
        count = [0]
        base = Hs.matvec
        from scipy.sparse.linalg import LinearOperator

        def mv(u):
            count[0] += 1
            return base(u)

        lop = LinearOperator(Hs.shape, matvec=mv, dtype=Hs.dtype)
        vals = eigsh(lop, k=1, which="LA", tol=1e-3, v0=unit_vector(Hs.shape[0], 0).numpy(),
                     return_eigenvectors=False)  # fmt: skip
        out = {"value": float(vals[0]), "hvps": count[0], "converged": True}
    else:
        raise ValueError(tool)
    out["seconds"] = time.perf_counter() - t0
    return out


# ====================================================================== memory (fresh subprocess)
MEM_CHILD = r"""
import sys, json, warnings
sys.path.insert(0, {bench!r})
import torch
torch.set_num_threads(1)
warnings.simplefilter("ignore")
import bench_hessian as b
import curvlinops, hessian_eigenthings, pyhessian, hessian_spectra.curvature.hessian, hessian_spectra.krylov.lanczos, scipy.sparse.linalg
model, batch = b.setup()
b.ce_loss(model, batch)
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
base = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
out = b.top_eigenvalue({tool!r}, model, batch, steps_hint={steps!r})
out["peak_extra_bytes"] = status("VmHWM:") - base
print("RESULT", json.dumps(out))
"""


def peak_memory(tool: str, steps: int | None) -> dict:
    code = MEM_CHILD.format(bench=str(ROOT / "bench"), tool=tool, steps=steps)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": proc.stderr[-400:]}


# ====================================================================== main
def med(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--e2e-repeats", type=int, default=1)
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--skip-hvp", action="store_true")
    ap.add_argument("--skip-steps", action="store_true")
    ap.add_argument("--step-runs", type=int, default=5, help="Lanczos runs per policy for the paired step")
    ap.add_argument("--skip-blocks", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    model, batch = setup()
    n = sum(p.numel() for p in params_of(model))
    print(f"model: {n:,} parameters in {len(params_of(model))} tensors, {BATCH * SEQ} tokens; "
          f"torch {torch.__version__}, 1 thread; load average at start: {loadavg()}")  # fmt: skip
    raw: dict = {"params": n, "load_start": loadavg()}

    if not args.skip_hvp:
        t = hvp_costs(model, batch, args.repeats)
        raw["hvp"] = t
        g, b = med(t["gradient"]), med(t["bare reused HVP"])
        print(f"\n## Per-HVP cost (median of {args.repeats} interleaved rounds; load {loadavg()})")
        print("| measurement | median s | / bare reused HVP | / gradient |")
        print("|---|---|---|---|")
        for k, xs in t.items():
            print(f"| {k} | {med(xs):.3f} | {med(xs) / b:.2f} | {med(xs) / g:.2f} |")

    if not args.skip_steps:
        ts = lanczos_step_pairs(model, batch, args.step_runs)
        raw["lanczos_step_pairs"] = ts
        print(f"\n## One Lanczos step / one bare reused HVP, paired within each run ({args.step_runs} runs per "
              f"policy, steps 2-12; load {loadavg()})")  # fmt: skip
        print(
            "| reorthogonalisation | pairs | median step / bare | quartiles | median step s | median bare s |"
        )
        print("|---|---|---|---|---|---|")
        for pol, rec in ts.items():
            q = statistics.quantiles(rec["ratio"], n=4)
            print(f"| {pol} | {len(rec['ratio'])} | {med(rec['ratio']):.3f} | {q[0]:.3f}-{q[2]:.3f} | "
                  f"{med(rec['step']):.3f} | {med(rec['bare']):.3f} |")  # fmt: skip

    if not args.skip_blocks:
        tb = block_costs(model, batch, max(3, args.repeats // 2))
        raw["blocks"] = tb
        full = med(tb["bare reused HVP"])
        print(f"\n## Block-diagonal matvec over all {len(params_of(model))} tensors (load {loadavg()})")
        print("| method | median s | / one full reused HVP |")
        print("|---|---|---|")
        for k, xs in tb.items():
            print(f"| {k} | {med(xs):.3f} | {med(xs) / full:.2f} |")

    if not args.skip_e2e:
        ref = top_eigenvalue("reference", model, batch)
        raw["reference"] = ref
        lam = ref["value"]
        res: dict[str, list[dict]] = {k: [] for k in ("ours", "PyHessian", "eigenthings", "curvlinops")}
        for _ in range(args.e2e_repeats):
            for tool in res:
                hint = res["ours"][-1]["hvps"] if tool == "eigenthings" else None
                res[tool].append(top_eigenvalue(tool, model, batch, steps_hint=hint))
        raw["e2e"] = res
        ours_t = med([r["seconds"] for r in res["ours"]])
        print(f"\n## Top eigenvalue end to end, target 1e-3 relative (reference lambda_max = {lam:.8g}, "
              f"residual {ref['residual']:.1e}, {ref['hvps']} HVPs; load {loadavg()})")  # fmt: skip
        print("| tool | median s | / ours | HVPs | rel. error | converged flag |")
        print("|---|---|---|---|---|---|")
        for tool, rs in res.items():
            s = med([r["seconds"] for r in rs])
            err = abs(rs[-1]["value"] - lam) / abs(lam)
            print(
                f"| {tool} | {s:.1f} | {s / ours_t:.2f} | {rs[-1]['hvps']} | {err:.1e} | {rs[-1]['converged']} |"
            )
        if not args.skip_memory:
            steps = res["ours"][-1]["hvps"]
            print(
                "\n## Peak memory of the end-to-end top-eigenvalue run (fresh process each; peak RSS above setup)"
            )
            print("| tool | peak extra MiB | HVPs |")
            print("|---|---|---|")
            mem = {}
            for tool in ("ours", "PyHessian", "eigenthings", "curvlinops"):
                mem[tool] = peak_memory(tool, steps if tool == "eigenthings" else None)
                m = mem[tool]
                if "error" in m:
                    print(f"| {tool} | error: {m['error'][-120:]!r} | |")
                else:
                    print(f"| {tool} | {m['peak_extra_bytes'] / 2**20:.0f} | {m['hvps']} |")
            raw["memory"] = mem
    print(f"\nload average at end: {loadavg()}")
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1, default=str))


if __name__ == "__main__":
    main()
