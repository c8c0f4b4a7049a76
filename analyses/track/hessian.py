"""The Hessian probe on every checkpoint of a series (``spectra track --hessian``): full-model lambda_max /
lambda_min (Lanczos), trace (SLQ), per-block lambda_max and trace (block SLQ) and block heterogeneity,
with the budget of ``spectra hessian``.

Models: a ``--model-factory`` builds the model, loss and batches once and each checkpoint's weights are
loaded into it (the same batches for every checkpoint); or each checkpoint is a Hugging Face folder,
loaded with ``--data`` tokenised by its own tokenizer (or ``tokenizer_dir``'s). One model in memory at
a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hessian_spectra.errors import InputError

__all__ = ["HessianSpec", "make_hessian_probe", "load_checkpoint_into"]


@dataclass(frozen=True)
class HessianSpec:
    """Where the model and data come from, and the Hessian budget (a HessianSettings)."""

    settings: Any
    factory: str | None = None
    data: str | None = None
    task: str | None = None
    batch_size: int = 8
    seq_len: int = 128
    batches: int = 4
    device: str | None = None
    tokenizer_dir: str | None = None

    def validate(self) -> None:
        self.settings.validate()
        if self.factory is None and self.data is None:
            raise InputError(
                "--hessian",
                "needs --model-factory module:function, or --data FILE with Hugging Face checkpoint folders",
            )
        if self.factory is not None and self.data is not None:
            raise InputError(
                "--data", "give either --model-factory or --data (HF checkpoint folders), not both"
            )


def load_checkpoint_into(model: Any, path: str | Path) -> None:
    """Load a checkpoint (any form ``open_checkpoint`` reads) into ``model``; tied parameters may be
    absent from the file. InputError naming the file when the tensors do not fit the model."""
    import torch
    from hessian_spectra.checkpoints.reader import open_checkpoint

    with open_checkpoint(path) as ckpt:
        state = {n: ckpt.load(n) for n in ckpt.names()}
        source = ckpt.source
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise InputError(
            source, f"weights do not fit the model ({' '.join(str(err).split())[:200]})"
        ) from None
    sd = model.state_dict()
    loaded = {sd[k].data_ptr() for k in state if k in sd and isinstance(sd[k], torch.Tensor)}
    missing = [k for k in missing if sd[k].data_ptr() not in loaded]  # tied copies are fine
    if missing or unexpected:
        raise InputError(
            source,
            f"weights do not match the model: missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}",
        )


def _summary(report: Any, het: Any) -> dict[str, Any]:
    lz, dens = report.lanczos, report.density
    out: dict[str, Any] = {
        "lambda_max": None if lz is None else lz.lambda_max,
        "lambda_min": None if lz is None else lz.lambda_min,
        "top": None if lz is None else list(lz.top),
        "bottom": None if lz is None else list(lz.bottom),
        "lanczos_converged": None if lz is None else lz.converged,
        "trace": None if dens is None else dens.trace,
        "trace_stderr": None if dens is None else dens.trace_stderr,
        "blocks": [
            {k: b[k] for k in ("name", "dim", "lambda_max", "lambda_min", "trace", "trace_stderr")}
            for b in report.block_summary()
        ],
        "num_hvps": report.num_hvps,
        "seconds": report.seconds,
        "notes": list(report.notes),
    }
    if het is not None:
        out["heterogeneity"] = {
            "verdict": het.verdict,
            "mean_js": dict(het.mean_js),
            "lambda_max_decades": het.scale_spread["lambda_max"]["decades"],
            "rule": het.verdict_rule,
        }
    return out


def make_hessian_probe(
    spec: HessianSpec,
    *,
    on_estimate: Callable[[Any], None] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> Callable[[Any], dict[str, Any]]:
    """``probe(entry) -> summary`` for the series entries (checked up front: InputError naming the flag)."""
    from hessian_spectra.analyses.heterogeneity.blocks import spectra_from_hessian
    from hessian_spectra.analyses.heterogeneity.verdict import analyze_heterogeneity
    from hessian_spectra.analyses.partitions.blockings import hessian_blocks
    from hessian_spectra.curvature.probe import run_hessian

    spec.validate()
    factory = None
    if spec.factory is not None:
        from hessian_spectra.analyses.workloads import load_factory

        factory = load_factory(spec.factory, device=spec.device)

    def probe(entry: Any) -> dict[str, Any]:
        if factory is not None:
            load_checkpoint_into(factory.model, entry.path)
            work = factory
        else:
            from hessian_spectra.analyses.workloads import TOKENIZER_FILES, load_hf_workload

            folder = Path(entry.path)
            if not folder.is_dir():
                raise InputError(folder, "--data needs Hugging Face checkpoint folders (config + weights)")
            tok = spec.tokenizer_dir
            here = any((folder / f).is_file() for f in TOKENIZER_FILES)
            if tok is None and not here and any((folder.parent / f).is_file() for f in TOKENIZER_FILES):
                tok = str(folder.parent)  # a Trainer run saves the tokenizer once, in its output folder
            work = load_hf_workload(
                entry.path, spec.data, task=spec.task, batch_size=spec.batch_size, seq_len=spec.seq_len,
                max_batches=spec.batches, device=spec.device, dtype=spec.settings.dtype,
                tokenizer_dir=tok,
            )  # fmt: skip
        batches = work.batches[: spec.batches] if spec.batches else work.batches
        choice = hessian_blocks(work.model, spec.settings)
        report = run_hessian(
            work.model, batches, work.loss, choice.settings, blocks=choice.blocks, block_notes=choice.notes,
            progress=progress, on_estimate=on_estimate,
        )  # fmt: skip
        het = analyze_heterogeneity(spectra_from_hessian(report)) if report.block_results else None
        return _summary(report, het)

    return probe
