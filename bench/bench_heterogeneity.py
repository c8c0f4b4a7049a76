"""Validation suite for the heterogeneity verdict (issue 11): does it reproduce "Why Transformers Need
Adam" (Zhang et al. 2024) on that paper's kinds of models, and does it track the SGD-vs-Adam gap?

Run:  nice -n 10 python bench/bench_heterogeneity.py [--models ...] [--seeds 0 1 2] [--probes 5 --steps 20]
      [--train-steps 400] [--gap-seeds 0] [--out bench/_work/heterogeneity] [--reuse]

Seven models at initialisation (bench/heterogeneity_suite.py: BERT, GPT-2, ViT from transformers configs
with eager attention; ResNet, VGG, MLP, MLP-Mixer in plain torch; 43-93k parameters; float32), per-tensor
Hessian blocks on one batch. Per model and seed: block spectra (exact for blocks of <= probes x steps
parameters, block SLQ for the rest), every heterogeneity statistic the report gives (the scale statistics,
mean JS under every convention, the old lambda_max spread and verdict) and the wall time; seed 0 again
with probes and steps both doubled. The claim's target: SGD with momentum 0.9 and Adam, each at the best
learning rate of a small grid, the same number of steps on the same batches from the same initialisation;
gap = (L_SGD - L_Adam) / (L_0 - L_Adam) on held-out batches of the same task (the share of Adam's progress
SGD misses; 0 = no gap). Spearman rank correlations between each statistic (mean over seeds) and the gap are
reported as they come out. Everything goes to OUT/results.json; ``--markdown`` prints the tables.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import heterogeneity_suite as suite  # noqa: E402

SGD_LRS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
ADAM_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)


def block_spectra_run(case: suite.SuiteCase, probes: int, steps: int, seed: int) -> dict[str, Any]:
    """The per-tensor block spectra of ``case`` at this budget: rows as the report writes them, wall time."""
    from hessian_spectra.curvature.probe import HessianSettings, run_hessian

    settings = HessianSettings(full=False, block_probes=probes, block_steps=steps, seed=seed)
    start = time.perf_counter()
    rep = run_hessian(case.model, case.hessian_batches, case.loss, settings)
    seconds = time.perf_counter() - start
    d = rep.to_dict()
    return {
        "seconds": seconds, "blocks": d["blocks"], "num_block_backwards": rep.num_block_backwards,
        "exact_blocks": len(rep.exact_block_names), "cost": rep.cost.describe(),
    }  # fmt: skip


def statistics_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Every statistic the report gives, from block rows: new scale statistics (flat blocks out), mean JS
    per convention (flat blocks out), and the old rule (lambda_max spread over all blocks, shape-only JS)."""
    from hessian_spectra.analyses.heterogeneity.blocks import spectra_from_hessian
    from hessian_spectra.analyses.heterogeneity.conventions import CONVENTIONS
    from hessian_spectra.analyses.heterogeneity.verdict import analyze_heterogeneity, scale_spread

    spectra = spectra_from_hessian({"blocks": rows})
    start = time.perf_counter()
    rep = analyze_heterogeneity(spectra, tuple(CONVENTIONS.values()), dtype="float32")
    seconds = time.perf_counter() - start
    old_spread = scale_spread(spectra)["lambda_max"]["decades"]  # every block, flat ones included (old)
    old_shape = rep.mean_js["shape-only"]
    old_verdict = "heterogeneous" if (old_spread or 0) >= 3.0 or (old_shape or 0) >= 0.4 else "homogeneous"
    return {
        "statistics": rep.statistics, "mean_js": rep.mean_js, "verdict": rep.verdict, "line": rep.verdict_line,
        "stderr": rep.statistic.get("stderr"), "flat": [f.to_dict() for f in rep.flat],
        "new_spread_decades": rep.scale_spread["lambda_max"]["decades"], "old_spread_decades": old_spread,
        "old_verdict": old_verdict, "analysis_seconds": seconds,
        "drivers": rep.drivers["statistic"][:3],
    }  # fmt: skip


def _eval_loss(model: torch.nn.Module, case: suite.SuiteCase) -> float:
    model.eval()
    with torch.no_grad():
        value = sum(float(case.loss(model, b)) for b in case.eval_batches) / len(case.eval_batches)
    return value if math.isfinite(value) else math.inf


def train_once(case: suite.SuiteCase, optimizer: str, lr: float, steps: int) -> float:
    """Final held-out loss after ``steps`` steps (inf when the loss diverged)."""
    model = copy.deepcopy(case.model)
    model.train()
    params = list(model.parameters())
    opt = (
        torch.optim.SGD(params, lr=lr, momentum=0.9)
        if optimizer == "sgd"
        else torch.optim.Adam(params, lr=lr)
    )
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = case.loss(model, case.train_batches[step % len(case.train_batches)])
        if not torch.isfinite(loss):
            return math.inf
        loss.backward()
        opt.step()
    return _eval_loss(model, case)


def optimizer_gap(case: suite.SuiteCase, steps: int) -> dict[str, Any]:
    """Best-of-grid SGD-momentum and Adam losses and the gap metrics (see the module docstring)."""
    start = time.perf_counter()
    l0 = _eval_loss(copy.deepcopy(case.model), case)
    sgd = {lr: train_once(case, "sgd", lr, steps) for lr in SGD_LRS}
    adam = {lr: train_once(case, "adam", lr, steps) for lr in ADAM_LRS}
    ls, la = min(sgd.values()), min(adam.values())
    return {
        "initial": l0, "sgd": {str(k): v for k, v in sgd.items()}, "adam": {str(k): v for k, v in adam.items()},
        "best_sgd": ls, "best_adam": la, "best_sgd_lr": min(sgd, key=sgd.get), "best_adam_lr": min(adam, key=adam.get),
        "gap": (ls - la) / (l0 - la) if l0 > la else math.nan, "difference": ls - la, "ratio": ls / la if la > 0 else math.inf,
        "seconds": time.perf_counter() - start,
    }  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results: dict[str, Any] = json.loads(path.read_text()) if args.reuse and path.exists() else {}
    results.setdefault("settings", vars(args) | {"sgd_lrs": SGD_LRS, "adam_lrs": ADAM_LRS})
    models = results.setdefault("models", {})
    budgets = [
        ("base", args.probes, args.steps, args.seeds),
        ("double", 2 * args.probes, 2 * args.steps, args.seeds[:1]),
    ]
    if args.no_hessian:
        budgets = []
    for name in args.models:
        entry = models.setdefault(name, {"family": suite.FAMILY[name], "runs": {}, "gap": {}})
        for label, probes, steps, seeds in budgets:
            for seed in seeds:
                key = f"{label}/{seed}"
                if key in entry["runs"]:
                    continue
                case = suite.build(name, seed, train_steps=0)
                entry["parameters"] = case.parameters
                spectra = block_spectra_run(case, probes, steps, seed)
                (out / f"{name}_{label}_{seed}.json").write_text(json.dumps(spectra["blocks"]))
                stats = statistics_of(spectra["blocks"])
                entry["runs"][key] = (
                    {k: v for k, v in spectra.items() if k != "blocks"}
                    | stats
                    | {
                        "probes": probes,
                        "steps": steps,
                        "num_blocks": len(spectra["blocks"]),
                    }
                )
                print(f"{name} {key}: {spectra['seconds']:.0f}s {stats['line']}", flush=True)
                path.write_text(json.dumps(results, indent=1, default=float))
        for seed in args.gap_seeds:
            if str(seed) in entry["gap"] or args.train_steps <= 0:
                continue
            case = suite.build(name, seed, train_steps=args.train_steps)
            entry["gap"][str(seed)] = optimizer_gap(case, args.train_steps)
            g = entry["gap"][str(seed)]
            print(f"{name} gap seed {seed}: SGD {g['best_sgd']:.3f} (lr {g['best_sgd_lr']}) Adam {g['best_adam']:.3f} "
                  f"(lr {g['best_adam_lr']}) from {g['initial']:.3f}: gap {g['gap']:.3f} ({g['seconds']:.0f}s)", flush=True)  # fmt: skip
            path.write_text(json.dumps(results, indent=1, default=float))
    return results


def restat(out: Path) -> None:
    """Recompute every run's statistics from its saved block spectra (OUT/<model>_<budget>_<seed>.json)."""
    path = out / "results.json"
    results = json.loads(path.read_text())
    for name, entry in results["models"].items():
        for key, run_ in entry["runs"].items():
            label, seed = key.split("/")
            rows = json.loads((out / f"{name}_{label}_{seed}.json").read_text())
            run_.update(statistics_of(rows))
    path.write_text(json.dumps(results, indent=1, default=float))


def exact_cost(names: list[str], probes: int, steps: int, threads: int) -> list[str]:
    """Side by side on seed 0: the block spectra with the exact path on (blocks of <= probes x steps
    parameters from their columns) and off (block SLQ for every block): median wall time of 2 interleaved
    runs each, pruned backwards and the verdict's statistic; and the whole-model default budget on the
    279-parameter MLP of the tests."""
    from hessian_spectra.curvature.probe import HessianSettings, run_hessian

    torch.set_num_threads(threads)
    lines = ["| model | exact on: s | backwards | sharpness-gap | exact off: s | backwards | sharpness-gap |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in names:
        case = suite.build(name, 0, train_steps=0)
        seconds: dict[bool, list[float]] = {True: [], False: []}
        cells: dict[bool, list[str]] = {}
        for exact in (False, True, False, True):  # interleaved, median of 2 each (a shared machine)
            settings = HessianSettings(
                full=False, block_probes=probes, block_steps=steps, seed=0, exact=exact
            )
            start = time.perf_counter()
            rep = run_hessian(case.model, case.hessian_batches, case.loss, settings)
            seconds[exact].append(time.perf_counter() - start)
            stat = statistics_of(rep.to_dict()["blocks"])["statistics"]["sharpness-gap"]
            cells[exact] = [str(rep.num_block_backwards), f"{stat:.4f}"]
        row = [name]
        for exact in (True, False):
            row += [f"{float(np.median(seconds[exact])):.1f}", *cells[exact]]
        lines.append("| " + " | ".join(row) + " |")
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 12), torch.nn.Tanh(),
                              torch.nn.Linear(12, 3)).double()  # fmt: skip
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(16, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g))
    lines += [
        "",
        "| 279-parameter MLP, default budget | HVPs | pruned block backwards | s |",
        "|---|---|---|---|",
    ]
    for exact in (True, False):
        start = time.perf_counter()
        rep = run_hessian(mlp, [batch], lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]),
                          HessianSettings(exact=exact))  # fmt: skip
        label = "exact where cheaper" if exact else "--no-exact (Lanczos + SLQ + block SLQ)"
        lines.append(
            f"| {label} | {rep.num_hvps} | {rep.num_block_backwards} | {time.perf_counter() - start:.2f} |"
        )
    return lines


def _seed_values(entry: dict[str, Any], get) -> list[float]:
    return [get(r) for k, r in entry["runs"].items() if k.startswith("base/") and get(r) is not None]


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def markdown(results: dict[str, Any]) -> str:
    """The suite's tables: per model every statistic (mean ± seed std over the base-budget seeds), its
    change at the doubled budget (seed 0), wall times, the old and new verdicts, the optimizer gap, and
    Spearman correlations of each statistic with the gap."""
    from scipy.stats import spearmanr

    models = results["models"]
    names = list(models)
    stat_names = list(next(iter(models.values()))["runs"]["base/0"]["statistics"])
    js_names = list(next(iter(models.values()))["runs"]["base/0"]["mean_js"])
    getters = {f"{n}": (lambda r, n=n: r["statistics"][n]) for n in stat_names}
    getters |= {f"JS {n}": (lambda r, n=n: r["mean_js"][n]) for n in js_names}
    getters["old lambda_max spread (all blocks), decades"] = lambda r: r["old_spread_decades"]
    getters["lambda_max spread (non-flat), decades"] = lambda r: r["new_spread_decades"]
    lines = ["| statistic | " + " | ".join(f"{n} ({models[n]['family']})" for n in names) + " |",
             "|---|" + "---|" * len(names)]  # fmt: skip
    for label, get in getters.items():
        cells = []
        for n in names:
            vals = _seed_values(models[n], get)
            double = models[n]["runs"].get("double/0")
            base0 = models[n]["runs"].get("base/0")
            delta = (
                f" (x2: {get(double) - get(base0):+.3f})"
                if double and get(double) is not None and get(base0) is not None
                else ""
            )
            cells.append(_fmt(vals) + delta)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for label, get in (
        ("new verdict (seeds)", lambda r: r["verdict"]),
        ("old verdict (seeds)", lambda r: r["old_verdict"]),
        ("flat blocks", lambda r: len(r["flat"])),
        ("exact blocks / blocks", lambda r: f"{r['exact_blocks']}/{r['num_blocks']}"),
        ("Hessian wall s (base, x2)", None),
    ):
        cells = []
        for n in names:
            runs = models[n]["runs"]
            if get is None:
                base = [
                    r["seconds"] + r["analysis_seconds"] for k, r in runs.items() if k.startswith("base/")
                ]
                dbl = runs.get("double/0")
                cells.append(
                    f"{np.mean(base):.0f}, {dbl['seconds'] + dbl['analysis_seconds']:.0f}"
                    if dbl
                    else f"{np.mean(base):.0f}"
                )
            else:
                vals = [str(get(r)) for k, r in runs.items() if k.startswith("base/")]
                cells.append(
                    ", ".join(sorted(set(vals), key=vals.index)) if label != "flat blocks" else "/".join(vals)
                )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    gaps = {n: [g["gap"] for g in models[n]["gap"].values()] for n in names}
    for label, key in (("gap (SGD-m vs Adam, share of Adam's progress missed)", "gap"),
                       ("best SGD-m / Adam loss", None), ("initial loss", "initial")):  # fmt: skip
        cells = []
        for n in names:
            g = list(models[n]["gap"].values())
            if not g:
                cells.append("-")
            elif key is None:
                cells.append(
                    ", ".join(
                        f"{x['best_sgd']:.3f} (lr {x['best_sgd_lr']}) / {x['best_adam']:.3f} (lr {x['best_adam_lr']})"
                        for x in g
                    )
                )
            else:
                cells.append(_fmt([x[key] for x in g]))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    have = [n for n in names if gaps[n]]
    corr = ["", "| statistic | Spearman rho with the gap | p |", "|---|---|---|"]
    if len(have) >= 3:
        gap = [float(np.mean(gaps[n])) for n in have]
        for label, get in getters.items():
            vals = [float(np.mean(_seed_values(models[n], get))) for n in have]
            rho, p = spearmanr(vals, gap)
            corr.append(f"| {label} | {rho:+.2f} | {p:.2f} |")
    return "\n".join(lines + corr + margins(results))


def margins(results: dict[str, Any]) -> list[str]:
    """Per statistic: seed mean ± sd per model, the margin of each model to a threshold in units of its
    seed sd (signed: positive = the side the paper's claim puts its family on, transformers above and
    CNNs/MLP below; the Mixer is not scored), at the verdict's threshold where the statistic has one, and
    at the threshold that maximises the smallest margin (the best any threshold could do)."""
    from hessian_spectra.analyses.heterogeneity.verdict import THRESHOLDS

    entries = results["models"]
    first = next(iter(entries.values()))["runs"]["base/0"]
    stats = {n: (lambda r, n=n: r["statistics"][n]) for n in first["statistics"]}
    stats |= {f"JS {n}": (lambda r, n=n: r["mean_js"][n]) for n in first["mean_js"]}
    out = ["", "| statistic | " + " | ".join(entries) + " | min margin at the verdict threshold | best threshold: min margin |",
           "|---|" + "---|" * (len(entries) + 2)]  # fmt: skip
    for stat, get in stats.items():
        rows = []
        for entry in entries.values():
            vals = _seed_values(entry, get)
            rows.append((float(np.mean(vals)), float(np.std(vals, ddof=1)), entry["family"]))
        scored = [
            (m, max(sd, 1e-12), {"transformer": 1.0, "cnn": -1.0, "mlp": -1.0}[f])
            for m, sd, f in rows
            if f != "mixer"
        ]

        def worst(t: float, scored=scored) -> float:
            return min(sign * (m - t) / sd for m, sd, sign in scored)

        grid = np.linspace(min(m for m, _, _ in scored), max(m for m, _, _ in scored), 2001)
        best = max(grid, key=worst)
        limit = THRESHOLDS.get(stat)
        at = f"{worst(limit):+.1f} sd (threshold {limit:g})" if limit is not None else "-"
        cells = [f"{m:.2f} ± {sd:.2f}" for m, sd, _ in rows]
        out.append(f"| {stat} | " + " | ".join(cells) + f" | {at} | {worst(best):+.1f} sd at {best:.3g} |")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(suite.ARCHITECTURES), choices=suite.ARCHITECTURES)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--gap-seeds", nargs="+", type=int, default=[0])
    p.add_argument("--probes", type=int, default=4)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--train-steps", type=int, default=400)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "_work" / "heterogeneity"))
    p.add_argument("--reuse", action="store_true", help="keep the runs already in OUT/results.json")
    p.add_argument("--markdown", action="store_true", help="only print the tables of OUT/results.json")
    p.add_argument("--restat", action="store_true", help="recompute the statistics from the saved spectra")
    p.add_argument("--no-hessian", action="store_true", help="only the optimizer gap")
    p.add_argument("--exact-cost", action="store_true", help="only the exact-vs-SLQ side-by-side (--models)")
    p.add_argument("--merge", default=None, help="copy the optimizer gaps of another OUT folder into OUT")
    args = p.parse_args()
    if args.exact_cost:
        print("\n".join(exact_cost(args.models, args.probes, args.steps, args.threads)))
        return
    if args.merge:
        path = Path(args.out) / "results.json"
        mine, other = (
            json.loads(path.read_text()),
            json.loads((Path(args.merge) / "results.json").read_text()),
        )
        for name, entry in other["models"].items():
            mine["models"].setdefault(name, entry | {"runs": {}})["gap"].update(entry["gap"])
        path.write_text(json.dumps(mine, indent=1, default=float))
    elif args.restat:
        restat(Path(args.out))
    elif not args.markdown:
        run(args)
    print(markdown(json.loads((Path(args.out) / "results.json").read_text())))


if __name__ == "__main__":
    main()
