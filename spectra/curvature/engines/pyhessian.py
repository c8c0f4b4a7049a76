"""Reproduce PyHessian 0.1 numbers (power iteration, Hutchinson trace) with safe defaults.

What this wrapper fixes around ``pyhessian.hessian``: ``cuda`` follows the model's device (PyHessian
defaults to CUDA), torch's RNG is seeded inside ``torch.random.fork_rng`` (the caller's RNG state is
untouched), the model runs in eval mode and every module's train/eval flag and every ``.grad`` are
restored afterwards, and a single batch vs a data loader is routed to the right PyHessian argument.
Caveats it keeps (that is the point of reproducing): power iteration targets the largest |lambda| and
stops on a relative change < ``tol`` (not a residual), so results are only as good as ``tol``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hessian_spectra.curvature.guards import frozen_buffers
from hessian_spectra.errors import SpectraError
from hessian_spectra.io import json_safe
from hessian_spectra.krylov.trace import TraceEstimate


@dataclass(frozen=True)
class PyHessianEigenvalues:
    """Eigenvalues from PyHessian's deflated power iteration (largest |lambda| first, signed)."""

    eigenvalues: tuple[float, ...]
    top_n: int
    max_iter: int
    tol: float
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return json_safe({"method": "pyhessian-power", **self.__dict__})


def _is_batch(obj: Any) -> bool:
    return isinstance(obj, tuple | list) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj)


def _split_batches(batches: Any) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, Iterable | None]:
    """(single batch, None) or (None, data loader): one batch lets PyHessian reuse its gradient graph."""
    if _is_batch(batches):
        return (batches[0], batches[1]), None
    if isinstance(batches, tuple | list):
        if len(batches) == 0:
            raise SpectraError("batches is empty")
        if not all(_is_batch(b) for b in batches):
            raise SpectraError("batches must be an (inputs, targets) pair or an iterable of such pairs")
        if len(batches) == 1:
            return (batches[0][0], batches[0][1]), None
        return None, list(batches)
    return None, batches


@contextlib.contextmanager
def _guarded(model: torch.nn.Module, seed: int) -> Iterator[bool]:
    """Eval mode, seeded RNG, and restored modes/grads; yields whether the model is on CUDA."""
    params = list(model.parameters())
    if not params:
        raise SpectraError("the model has no parameters")
    bad = sorted({str(p.dtype) for p in params if p.requires_grad and p.dtype != torch.float32})
    if bad:
        raise SpectraError(f"PyHessian draws float32 vectors; parameters with dtype {bad} are not supported")
    cuda = params[0].is_cuda
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.grad) for p in params]
    devices = [params[0].device.index or 0] if cuda else []
    try:
        with torch.random.fork_rng(devices=devices), warnings.catch_warnings(), frozen_buffers(model):
            # PyHessian's backward(create_graph=True) warns about a grad cycle; we reset .grad after.
            warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
            torch.manual_seed(int(seed))
            yield cuda
    finally:
        for m, training in modes:
            m.training = training
        for p, g in grads:
            p.grad = g


def _hessian(model: torch.nn.Module, criterion: Callable, batches: Any, cuda: bool) -> Any:
    try:
        from pyhessian import hessian
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise SpectraError("the PyHessian engine needs `pip install pyhessian==0.1`") from err
    single, loader = _split_batches(batches)
    for p in model.parameters():
        p.grad = None  # PyHessian accumulates into .grad with create_graph=True
    if single is not None:
        return hessian(model, criterion, data=single, cuda=cuda)
    return hessian(model, criterion, dataloader=loader, cuda=cuda)


def pyhessian_top_eigenvalues(
    model: torch.nn.Module,
    criterion: Callable,
    batches: Any,
    top_n: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
) -> PyHessianEigenvalues:
    """PyHessian's ``eigenvalues(maxIter, tol, top_n)``: deflated power iteration on the loss Hessian.

    Returns the largest-|lambda| eigenvalues (signed; not lambda_max when |lambda_min| is larger),
    each accurate only to about ``tol`` relative (its stopping rule is a change between iterates).
    """
    with _guarded(model, seed) as cuda:
        h = _hessian(model, criterion, batches, cuda)
        vals, _ = h.eigenvalues(maxIter=int(max_iter), tol=float(tol), top_n=int(top_n))
    return PyHessianEigenvalues(
        tuple(float(v) for v in vals), int(top_n), int(max_iter), float(tol), int(seed)
    )


def pyhessian_trace(
    model: torch.nn.Module,
    criterion: Callable,
    batches: Any,
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
) -> TraceEstimate:
    """PyHessian's Hutchinson ``trace(maxIter, tol)`` with a standard error over the probes it used
    (it stops once the running mean changes by < ``tol`` relative, often after only a few probes)."""
    with _guarded(model, seed) as cuda:
        h = _hessian(model, criterion, batches, cuda)
        samples = np.asarray(h.trace(maxIter=int(max_iter), tol=float(tol)), dtype=np.float64)
    n = int(samples.size)
    stderr = float(samples.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return TraceEstimate(float(samples.mean()), stderr, n, "pyhessian-hutchinson", n, int(seed))


def pyhessian_density(*args: Any, **kwargs: Any) -> None:
    """Not supported: PyHessian 0.1's ``density()`` calls ``torch.eig``, removed in torch >= 2."""
    raise SpectraError(
        "PyHessian's density() calls torch.eig, which was removed in torch 2.0, so it cannot run here; "
        "use spectra.slq(operator).density() (stochastic Lanczos quadrature with float64 bookkeeping)"
    )
