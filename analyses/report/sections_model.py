"""report.md sections about the model as a whole: the Adam-mini partition, the weight spectra and the
provenance (inputs with hashes, every setting, versions, seed, start and end time)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from hessian_spectra.analyses.findings.model import SECTIONS
from hessian_spectra.analyses.report.numbers import fmt, fmt_bytes, fmt_percent
from hessian_spectra.analyses.report.plots import caption
from hessian_spectra.analyses.report.tables import code, figure, heading, md_table

__all__ = ["partition_section", "weights_section", "provenance_section"]

Doc = Mapping[str, Any]


def partition_section(doc: Doc) -> list[str]:
    """The Adam-mini partition's summary; the partition itself is the attached partition.json."""
    part = doc.get("partition")
    if not part:
        return []
    s = part["summary"]
    state = s.get("optimizer_state") or {}
    size = lambda k: fmt_bytes((state.get(k) or {}).get("fp32_bytes"))  # noqa: E731
    lines = heading(2, "Adam-mini partition", SECTIONS["partition"])
    lines += [
        f"{fmt(s['num_learning_rates'])} learning rates for {fmt(s['num_params'])} parameters "
        f"({fmt_percent(s.get('learning_rate_share'))}); fp32 optimizer state {size('partition')} vs "
        f"{size('adamw')} for AdamW (saves {fmt_percent(state.get('saving_fraction'))}). Attached: "
        f"[{part['file']}]({part['file']}) (the `spectra partition` format, with an adam-mini 1.1.1 configuration).",
        "",
    ]
    rows = [
        [rule, d["tensors"], d["params"], d["blocks"]]
        for rule, d in sorted((s.get("per_rule") or {}).items())
    ]
    lines += md_table(["block_rule", "n_tensors", "n_params", "learning_rates"], rows) + [""]
    if part.get("unresolved"):
        lines += [
            "No rule covers (one learning rate per coordinate): "
            + ", ".join(code(n) for n in part["unresolved"]),
            "",
        ]
    if part.get("buffers"):
        lines += ["Buffers saved with the weights, not counted as parameters: "
                  + ", ".join(code(n) for n in part["buffers"]), ""]  # fmt: skip
    return lines


def weights_section(doc: Doc, figures: Sequence[str]) -> list[str]:
    """One row per weight matrix (the full set of metrics is in report.json and weights.csv)."""
    w = doc.get("weights")
    if not w:
        return []
    lines = heading(2, "Weight spectra", SECTIONS["weights"])
    lines += [
        f"Source: `{w['source']}`; {w['summary']['n_matrices']} matrices (every metric in report.json).",
        "",
    ]
    rows = []
    for m in w["matrices"]:
        mm = m.get("metrics") or {}
        rows.append([code(m["name"]), m["role"], f"{m['shape'][0]}x{m['shape'][1]}", mm.get("sigma_max"),
                     mm.get("stable_rank"), mm.get("alpha"), mm.get("n_tail"), mm.get("modified_condition_number"),
                     mm.get("mp_n_spikes"), m["status"]])  # fmt: skip
    cols = ["matrix", "role", "shape", "sigma_max", "stable_rank", "alpha", "n_tail", "modified_condition_number",
            "mp_n_spikes", "status"]  # fmt: skip
    lines += md_table(cols, rows, what="matrices") + [""]
    return lines + figure("weights_depth", caption("weights_depth"), figures)


def workload_lines(doc: Doc) -> list[str]:
    """What the workload was built from and every tensor the checkpoint did not provide (never silent), as
    "At a glance" bullets."""
    inputs, loading = doc.get("inputs") or {}, doc.get("loading") or {}
    out = []

    def names(items: Sequence[str], first: int) -> str:
        return ", ".join(code(n) for n in items[:first]) + (" ..." if len(items) > first else "")

    if inputs.get("task"):
        data = inputs.get("data")
        name = data.get("name") if isinstance(data, Mapping) else data
        used = next((f"{fmt(inputs[k])} {k}" for k in ("pairs", "images", "records") if inputs.get(k)), None)
        out.append(f"Task `{inputs['task']}` on `{name}`" + (f" ({used})" if used else "")
                   + (f"; loss: {inputs['loss']}." if inputs.get("loss") else "."))  # fmt: skip
    excluded = (inputs.get("excluded_from_hessian") or {}).get("parameters") or []
    if excluded:
        out.append(f"{len(excluded)} parameters are excluded from the Hessian (the loss does not depend on them): "
                   f"{names(excluded, 8)}.")  # fmt: skip
    if loading.get("freshly_initialised"):
        fresh = loading["freshly_initialised"]
        out.append(f"**{len(fresh)} tensors were freshly initialised** (not in the checkpoint; --allow-missing): "
                   f"{names(fresh, 20)}.")  # fmt: skip
    if loading.get("unexpected"):
        out.append(f"{len(loading['unexpected'])} checkpoint tensors are not in the model and were not used: "
                   f"{names(loading['unexpected'], 20)}.")  # fmt: skip
    if loading.get("ignored"):
        out.append(f"{len(loading['ignored'])} checkpoint tensors belong to a head this task does not use "
                   f"(ignored): {names(loading['ignored'], 8)}.")  # fmt: skip
    return [f"- {line}" for line in out]


def provenance_section(doc: Doc) -> list[str]:
    """Versions, seed, times; the inputs with sizes and SHA-256; every setting (as JSON)."""
    prov = doc["provenance"]
    lines = heading(2, "Provenance", SECTIONS["provenance"])
    keys = ("tool_version", "python", "torch", "numpy", "scipy", "platform", "seed", "torch_threads",
            "started_utc", "finished_utc", "wall_seconds", "created_utc")  # fmt: skip
    lines += [
        f"- {k}: {fmt(prov[k]) if not isinstance(prov[k], str) else prov[k]}" for k in keys if k in prov
    ]
    lines.append(f"- source: `{doc['source']}`")
    lines += _inputs_lines(doc.get("inputs"))
    lines += ["", "Settings (every option the run used):", "", "```json",
              json.dumps(doc.get("settings") or {}, indent=1, sort_keys=True), "```", ""]  # fmt: skip
    return lines


def _inputs_lines(inputs: Mapping[str, Any] | None) -> list[str]:
    if not inputs:
        return ["- inputs: not recorded (a live model passed from Python)"]
    out: list[str] = []
    if inputs.get("kind") == "generated":
        kept = f", kept at `{inputs['kept_at']}`" if inputs.get("kept_at") else ", not kept"
        out.append(
            f"- input: {inputs['what']}, created by the tool (`{inputs['by']}`, seed {inputs.get('seed')}){kept}"
        )
    for key in (
        "task",
        "tokenizer",
        "batch_size",
        "seq_len",
        "num_batches",
        "sequences",
        "tokens",
        "loss_tokens",
        "factory",
    ):
        if inputs.get(key) is not None:
            out.append(f"- {key}: {fmt(inputs[key])}")
    files = []
    for label, rec in (
        ("data", inputs.get("data")),
        ("model", inputs.get("model")),
        ("weights", inputs.get("weights")),
    ):
        hashes = (rec or {}).get("hashes")
        if hashes:
            out.append(f"- {label}: `{rec.get('path')}`, {len(hashes['files'])} files, {fmt(hashes['total_bytes'])} "
                       f"bytes, hashed in {fmt(hashes['hash_seconds'], 3)} s")  # fmt: skip
            files += [[code(f["name"]), f["size_bytes"], code(f["sha256"])] for f in hashes["files"]]
    if inputs.get("factory_file"):
        f = inputs["factory_file"]["files"][0]
        out.append(f"- factory file: `{f['name']}`, sha256 `{f['sha256']}`")
    if files:
        out += ["", *md_table(["file", "size_bytes", "sha256"], files, what="files")]
    return out
