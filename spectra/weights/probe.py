"""The weight-spectrum probe: checkpoint -> matrices -> singular values -> metrics -> one report.

Tensors are read one at a time from the checkpoint, turned into matrices by the rules in
:mod:`hessian_spectra.checkpoints.matrices`, and reduced to singular values in float64 (or the requested dtype); only the
singular values are kept, so peak memory is about the largest tensor plus working space. This module is the
run (CPU, numpy or torch, and the batched device path); what to compute is planned in
:mod:`hessian_spectra.weights.plan`, the result types are in :mod:`hessian_spectra.weights.results`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from hessian_spectra.checkpoints.matrices import MatrixView, TensorRecord, extract_matrices
from hessian_spectra.checkpoints.reader import Checkpoint, open_checkpoint
from hessian_spectra.weights.metrics import compute_metrics
from hessian_spectra.weights.plan import WeightsSettings, _spectrum_plan, compute_dtype_of, plan_inventory
from hessian_spectra.weights.provenance import provenance
from hessian_spectra.weights.results import MatrixReport, WeightsReport, full_status
from hessian_spectra.weights.summary import summarize
from hessian_spectra.weights.svd import count_nonfinite, scaled_singular_values
from hessian_spectra.weights.svd_partial import partial_singular_values

if TYPE_CHECKING:  # torch is imported only for .bin/.pt checkpoints and live modules
    import torch

Progress = Callable[[int, int, str], None]


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
        ckpt = stack.enter_context(open_checkpoint(source, entry=settings.entry))
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
        optimizer = ckpt.optimizer_report() if settings.optimizer_state else None
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
        optimizer_state=optimizer,
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
    computed by :func:`hessian_spectra.weights.svd_batched.singular_values_batched` (one batched call per shape when ``batch``;
    None: only off the CPU, where batching pays). Partial spectra and NaN/Inf matrices go one by one."""
    from hessian_spectra.weights.svd_batched import scaled_singular_values_batched

    out: list[MatrixReport | None] = [None] * len(views)
    full: list[int] = []
    for i, view in enumerate(views):
        m = view.matrix
        shape = (int(m.shape[0]), int(m.shape[1]))
        if isinstance(m, np.ndarray) or _spectrum_plan(shape, settings)[0] is not None or count_nonfinite(m):
            out[i] = analyse_view(view, None, settings, compute_dtype)
        else:
            full.append(i)
    svs = scaled_singular_values_batched(
        [views[i].matrix for i in full], dtype=compute_dtype, method=settings.method, batch=batch
    )
    for i, sv in zip(full, svs, strict=True):
        v = views[i]
        shape = (int(v.matrix.shape[0]), int(v.matrix.shape[1]))
        extra = _spectrum_plan(shape, settings)[2]
        note = _join(v.note, extra) if extra else v.note
        metrics = compute_metrics(sv.values, shape, name=v.name, dtype=settings.dtype, exponent=sv.exponent)
        out[i] = MatrixReport(
            v.name,
            v.tensor_name,
            v.kind,
            v.role,
            shape,
            full_status(metrics),
            note,
            0,
            metrics,
            sv.unscaled(),
        )
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


def analyse_view(
    view: MatrixView, config: dict | None, settings: WeightsSettings, compute_dtype: torch.dtype | str
) -> MatrixReport:
    """Singular values and metrics of one matrix; NaN/Inf are reported, never raised (``config`` unused: roles
    come with the view).

    CPU torch matrices are handed to numpy (zero-copy; bf16/f16 as exact float32) so every checkpoint
    format gets the same numpy/LAPACK arithmetic and identical numbers; other devices stay in torch."""
    matrix = view.matrix
    if not isinstance(matrix, np.ndarray) and matrix.device.type == "cpu":
        from hessian_spectra.checkpoints.base import _torch_to_numpy

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
        status = "zero" if metrics.spectrum == "zero" else "partial"
    else:
        scaled = scaled_singular_values(matrix, dtype=compute_dtype, method=settings.method)
        metrics = compute_metrics(
            scaled.values, shape, name=view.name, dtype=settings.dtype, exponent=scaled.exponent
        )
        sv = scaled.unscaled()
        status = full_status(metrics)
    return MatrixReport(view.name, view.tensor_name, view.kind, role, shape, status, note, 0, metrics, sv)


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b
