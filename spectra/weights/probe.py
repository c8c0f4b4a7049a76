"""The weight-spectrum probe: checkpoint -> matrices -> singular values -> metrics -> one report.

Tensors are read one at a time from the checkpoint, turned into matrices by the rules in
:mod:`hessian_spectra.checkpoints.matrices`, and reduced to singular values in float64 (or the requested dtype); only the
singular values are kept, so peak memory is about the largest tensor plus working space.
"""

from __future__ import annotations

import fnmatch
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from hessian_spectra.checkpoints.matrices import (
    ExtractOptions,
    MatrixView,
    TensorRecord,
    extract_matrices,
    plan_tensor,
)
from hessian_spectra.checkpoints.reader import Checkpoint, FileInfo, open_checkpoint
from hessian_spectra.weights.metrics import MatrixMetrics, ModelSummary, compute_metrics, summarize
from hessian_spectra.weights.svd import count_nonfinite, partial_singular_values, singular_values

if TYPE_CHECKING:  # torch is imported only for .bin/.pt checkpoints and live modules
    import torch

SCHEMA_VERSION = "hessian-spectra/weights/1"

#: Matrices with more elements than this get a partial (top/bottom-k) spectrum unless told otherwise.
DEFAULT_FULL_MAX_ELEMENTS = 150_000_000

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class WeightsSettings:
    """Everything that changes the numbers of a weights report (recorded in its provenance)."""

    layers: tuple[str, ...] = ()
    topk: int | None = None
    dtype: str = "float64"
    method: str = "auto"
    threads: int | None = None
    seed: int = 0
    full_max_elements: int = DEFAULT_FULL_MAX_ELEMENTS
    min_dim: int = 2
    conv_rule: str = "flatten"
    split_qkv: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MatrixReport:
    """One analysed matrix: where it came from, its status and its metrics.

    ``status`` is ``"ok"``, ``"partial"`` (top/bottom-k only: full-spectrum metrics are None) or
    ``"nonfinite"`` (the matrix holds NaN/Inf; no metrics are computed, ``n_nonfinite`` says how many).
    """

    name: str
    tensor_name: str
    kind: str
    role: str
    shape: tuple[int, int]
    status: str
    note: str
    n_nonfinite: int
    metrics: MatrixMetrics | None
    singular_values: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tensor_name": self.tensor_name,
            "kind": self.kind,
            "role": self.role,
            "shape": list(self.shape),
            "status": self.status,
            "note": self.note,
            "n_nonfinite": self.n_nonfinite,
            "metrics": None if self.metrics is None else self.metrics.to_dict(),
        }


@dataclass(frozen=True)
class WeightsReport:
    """The result of :func:`analyze_weights`: inventory, per-matrix metrics, summary and provenance."""

    source: str
    files: tuple[FileInfo, ...]
    inventory: tuple[TensorRecord, ...]
    matrices: tuple[MatrixReport, ...]
    summary: ModelSummary
    settings: WeightsSettings
    provenance: dict[str, Any]
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "source": self.source,
            "files": [asdict(f) for f in self.files],
            "settings": self.settings.to_dict(),
            "provenance": self.provenance,
            "notes": list(self.notes),
            "summary": self.summary.to_dict(),
            "matrices": [m.to_dict() for m in self.matrices],
            "inventory": [_record_dict(r) for r in self.inventory],
        }


def analyze_weights(
    source: str | Path | torch.nn.Module,
    settings: WeightsSettings | None = None,
    *,
    progress: Progress | None = None,
    device: str | torch.device | None = None,
) -> WeightsReport:
    """Run the weight-spectrum probe on a checkpoint path or a live module (never modified).

    Safetensors checkpoints (single, sharded, HF folder) are read and decomposed with numpy alone, so torch
    is never imported (``--threads`` then limits BLAS through threadpoolctl when installed, otherwise BLAS
    threads follow ``OMP_NUM_THREADS``); ``.bin``/``.pt`` files and live modules use torch.
    ``device`` (None or ``"cpu"``: the CPU paths above; ``"auto"``: a GPU when torch sees one): on a GPU
    such as ``"cuda:0"`` every tensor is copied there as it is read and the full spectra of same-shape
    matrices are computed in one batched torch call per shape (:func:`analyse_views`, at most
    :data:`DEVICE_BATCH_BYTES` of matrices at once); top/bottom-k spectra stay on the CPU (ARPACK). The
    device used is recorded in the provenance.
    """
    from contextlib import ExitStack

    settings = settings or WeightsSettings()
    if settings.dtype not in ("float64", "float32"):
        raise ValueError(f"dtype must be float64 or float32, got {settings.dtype!r}")
    if isinstance(device, str):
        from hessian_spectra.parallel.devices import resolve_device

        device = resolve_device(device, "device")  # "auto" -> a GPU when torch sees one, else "cpu"
    on_cpu = device is None or str(device) == "cpu"
    started = time.perf_counter()
    with ExitStack() as stack:
        ckpt = stack.enter_context(open_checkpoint(source))
        use_numpy = ckpt.torch_free and on_cpu
        compute_dtype: Any = settings.dtype if use_numpy else compute_dtype_of(settings)
        if settings.threads:
            stack.enter_context(_thread_limit(settings.threads, use_numpy))
        records = plan_inventory(ckpt, settings)
        todo = [r for r in records if r.status == "analysed"]
        if on_cpu:
            results: list[MatrixReport] = []
            for i, record in enumerate(todo):
                if progress is not None:
                    progress(i, len(todo), record.name)
                tensor = ckpt.load_numpy(record.name) if use_numpy else ckpt.load(record.name)
                views = extract_matrices(record, tensor)
                for view in views:
                    results.append(analyse_view(view, ckpt.config, settings, compute_dtype))
                del tensor, views
        else:
            results = analyse_on_device(ckpt, todo, settings, device, progress=progress)
        if progress is not None:
            progress(len(todo), len(todo), "")
        files = tuple(ckpt.files)
        notes = tuple(ckpt.notes)
        display = ckpt.source
    elapsed = time.perf_counter() - started
    summary = summarize([m.metrics for m in results if m.metrics is not None])
    return WeightsReport(
        source=display,
        files=files,
        inventory=tuple(records),
        matrices=tuple(results),
        summary=summary,
        settings=settings,
        provenance=provenance(
            settings.seed,
            {
                "analysis_seconds": round(elapsed, 4),
                "backend": "numpy" if use_numpy else "torch",
                "device": "cpu" if on_cpu else str(device),
            },
        ),
        notes=notes,
    )


#: Bytes of matrices (in the compute dtype) gathered on a device before one batched decomposition.
DEVICE_BATCH_BYTES = 2**30


def analyse_on_device(
    ckpt: Checkpoint,
    todo: Sequence[TensorRecord],
    settings: WeightsSettings,
    device: str | torch.device,
    *,
    progress: Progress | None = None,
    batch: bool = True,
    max_batch_bytes: int = DEVICE_BATCH_BYTES,
) -> list[MatrixReport]:
    """Read each planned tensor, copy it to ``device`` and decompose the matrices there, in order.

    Matrices are gathered until they reach ``max_batch_bytes`` (in the compute dtype), then decomposed by
    :func:`analyse_views` (same-shape full spectra in one batched call when ``batch``). Runs on any
    torch device (the tests drive it on the CPU).
    """
    import torch

    dev = torch.device(device)
    compute_dtype = compute_dtype_of(settings)
    itemsize = torch.empty((), dtype=compute_dtype).element_size()
    results: list[MatrixReport] = []
    pending: list[MatrixView] = []
    pending_bytes = 0
    for i, record in enumerate(todo):
        if progress is not None:
            progress(i, len(todo), record.name)
        tensor = ckpt.load(record.name).to(dev)
        for view in extract_matrices(record, tensor):
            pending.append(view)
            pending_bytes += int(view.matrix.numel()) * itemsize
        del tensor
        if pending_bytes >= max_batch_bytes:
            results.extend(analyse_views(pending, settings, compute_dtype, batch=batch))
            pending, pending_bytes = [], 0
    if pending:
        results.extend(analyse_views(pending, settings, compute_dtype, batch=batch))
    return results


def analyse_views(
    views: Sequence[MatrixView],
    settings: WeightsSettings,
    compute_dtype: torch.dtype,
    *,
    batch: bool | None = None,
) -> list[MatrixReport]:
    """:func:`analyse_view` for many matrices, in order; the full spectra of finite torch matrices are
    computed by :func:`hessian_spectra.weights.svd.singular_values_batched` (one batched call per shape when ``batch``;
    None: only off the CPU, where batching pays). Partial spectra and NaN/Inf matrices go one by one."""
    from hessian_spectra.weights.svd import singular_values_batched

    out: list[MatrixReport | None] = [None] * len(views)
    full: list[int] = []
    for i, view in enumerate(views):
        m = view.matrix
        shape = (int(m.shape[0]), int(m.shape[1]))
        if isinstance(m, np.ndarray) or _spectrum_plan(shape, settings)[0] is not None or count_nonfinite(m):
            out[i] = analyse_view(view, None, settings, compute_dtype)
        else:
            full.append(i)
    svs = singular_values_batched(
        [views[i].matrix for i in full], dtype=compute_dtype, method=settings.method, batch=batch
    )
    for i, sv in zip(full, svs, strict=True):
        v = views[i]
        shape = (int(v.matrix.shape[0]), int(v.matrix.shape[1]))
        extra = _spectrum_plan(shape, settings)[2]
        note = _join(v.note, extra) if extra else v.note
        metrics = compute_metrics(sv, shape, name=v.name, dtype=settings.dtype)
        out[i] = MatrixReport(v.name, v.tensor_name, v.kind, v.role, shape, "ok", note, 0, metrics, sv)
    return [r for r in out if r is not None]


def _thread_limit(threads: int, use_numpy: bool):
    """Context manager limiting compute threads: BLAS's via threadpoolctl when installed (otherwise BLAS
    threads follow ``OMP_NUM_THREADS``), plus torch's when the checkpoint is read with torch."""
    from contextlib import ExitStack, contextmanager

    @contextmanager
    def limited():
        with ExitStack() as stack:
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:
                pass
            else:
                stack.enter_context(threadpool_limits(limits=threads))
            if use_numpy:
                yield
                return
            import torch

            old = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                yield
            finally:
                torch.set_num_threads(old)

    return limited()


def compute_dtype_of(settings: WeightsSettings) -> torch.dtype:
    """The torch dtype the spectra are computed in (validated: float64 or float32)."""
    import torch

    if settings.dtype not in ("float64", "float32"):
        raise ValueError(f"dtype must be float64 or float32, got {settings.dtype!r}")
    return torch.float64 if settings.dtype == "float64" else torch.float32


def plan_inventory(ckpt: Checkpoint, settings: WeightsSettings) -> list[TensorRecord]:
    """One record per tensor from metadata alone: analysed (with its matrices) or skipped with a reason."""
    options = ExtractOptions(
        min_dim=settings.min_dim, conv_rule=settings.conv_rule, split_qkv=settings.split_qkv
    )
    records = []
    for name in ckpt.names():
        record = plan_tensor(
            ckpt.meta(name), config=ckpt.config, module_type=ckpt.module_types.get(name), options=options
        )
        if record.status == "analysed" and settings.layers and not _selected(name, settings.layers):
            record = _skip(record, "not selected by --layers")
        records.append(record)
    return records


def analyse_view(
    view: MatrixView, config: dict | None, settings: WeightsSettings, compute_dtype: torch.dtype | str
) -> MatrixReport:
    """Singular values and metrics of one matrix; NaN/Inf are reported, never raised (``config`` unused: roles
    come with the view).

    CPU torch matrices are handed to numpy (zero-copy; bf16/f16 as exact float32) so every checkpoint
    format gets the same numpy/LAPACK arithmetic and identical numbers; other devices stay in torch."""
    matrix = view.matrix
    if not isinstance(matrix, np.ndarray) and matrix.device.type == "cpu":
        from hessian_spectra.checkpoints.reader import _torch_to_numpy

        matrix = _torch_to_numpy(matrix.detach())
    shape = (int(matrix.shape[0]), int(matrix.shape[1]))
    role = view.role
    n_bad = count_nonfinite(matrix)
    if n_bad:
        return MatrixReport(
            view.name, view.tensor_name, view.kind, role, shape, "nonfinite",
            _join(view.note, f"{n_bad} NaN/Inf entries: metrics not computed"), n_bad, None,
        )  # fmt: skip
    k, which, extra = _spectrum_plan(shape, settings)
    note = _join(view.note, extra) if extra else view.note
    if k is not None:
        part = partial_singular_values(matrix, k, which=which, seed=settings.seed)
        metrics = compute_metrics(None, shape, name=view.name, dtype=settings.dtype, partial=part)
        sv = part.top
        status = "partial"
    else:
        sv = singular_values(matrix, dtype=compute_dtype, method=settings.method)
        metrics = compute_metrics(sv, shape, name=view.name, dtype=settings.dtype)
        status = "ok"
    return MatrixReport(view.name, view.tensor_name, view.kind, role, shape, status, note, 0, metrics, sv)


def _spectrum_plan(shape: tuple[int, int], settings: WeightsSettings) -> tuple[int | None, str, str]:
    """``(k, which, note)``: k None for a full spectrum, else the partial spectrum to compute and why."""
    numel = shape[0] * shape[1]
    k, which, note = settings.topk, "both", ""
    if k is None and numel > settings.full_max_elements:
        # automatic fallback for huge matrices: top-k by matrix-vector products only (bottom-k needs a
        # QR factor, i.e. a float64 copy of the whole matrix, which is what this path avoids)
        k, which = 64, "top"
        note = f"{numel} elements > full_max_elements={settings.full_max_elements}: top-{k} only"
    if k is not None and k >= min(shape):
        return None, which, note
    return k, which, note


def provenance(seed: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Versions, platform, time and seed: what a reader needs to reproduce a report."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("hessian-spectra")
    except PackageNotFoundError:  # running from a checkout that was never installed
        own = "0+unknown"
    info: dict[str, Any] = {
        "tool": "hessian-spectra",
        "tool_version": own,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": _torch_version(),
        "numpy": np.__version__,
        "scipy": version("scipy"),
        "seed": seed,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # None when torch was never imported (the safetensors fast path does not need it)
        "torch_threads": sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None,
    }
    info.update(extra or {})
    return info


def _torch_version() -> str | None:
    """torch's version without importing it (package metadata), or None when it is not installed."""
    if "torch" in sys.modules:
        return sys.modules["torch"].__version__
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return None


CSV_COLUMNS_HEAD = ("name", "tensor_name", "kind", "role", "rows", "cols", "status", "n_nonfinite")


def report_rows(report: WeightsReport) -> list[dict[str, Any]]:
    """Flatten the per-matrix results into CSV rows (one per matrix, metrics as columns)."""
    rows = []
    for m in report.matrices:
        row: dict[str, Any] = {
            "name": m.name, "tensor_name": m.tensor_name, "kind": m.kind, "role": m.role,
            "rows": m.shape[0], "cols": m.shape[1], "status": m.status, "n_nonfinite": m.n_nonfinite,
        }  # fmt: skip
        if m.metrics is not None:
            for key, value in m.metrics.to_dict().items():
                if key in ("name", "shape"):
                    continue
                if isinstance(value, dict):
                    for sub, subval in value.items():
                        row[f"{key}_{sub}"] = subval
                elif isinstance(value, list | tuple):
                    row[key] = "; ".join(str(v) for v in value)
                else:
                    row[key] = value
        row["note"] = m.note
        rows.append(row)
    return rows


def report_csv(report: WeightsReport) -> str:
    """The CSV text of :func:`report_rows` (columns in first-seen order; empty cell = not computed)."""
    import csv
    import io
    import math

    rows = report_rows(report)
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        clean = {
            k: ("" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v)
            for k, v in row.items()
        }
        writer.writerow(clean)
    return buf.getvalue()


def _selected(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _skip(record: TensorRecord, reason: str) -> TensorRecord:
    from dataclasses import replace

    return replace(record, status="skipped", reason=reason, matrices=())


def _record_dict(record: TensorRecord) -> dict[str, Any]:
    d = asdict(record)
    d["shape"] = list(record.shape)
    d["matrices"] = list(record.matrices)
    return d


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b
