"""Sharpness inside a training loop: :class:`SharpnessTracker` measures lambda_max of the loss Hessian
(on request lambda_min, per-block lambda_max, a trace, and Adam's preconditioned lambda_max) every N
steps, each Lanczos run warm-started from the previous run's Ritz vectors, beside the optimizer's
edge-of-stability threshold (:mod:`hessian_spectra.curvature.stability`).

A tracker step leaves the model exactly as it found it: weights and buffers are never written (the
operator differentiates detached views), every module's train/eval flag and the attention backend are
restored, ``.grad`` is untouched (``autograd.grad``, never ``backward``) and the global RNG states are
forked and restored. Design notes: spectra/docs/tracking.md.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hessian_spectra.curvature.blocks import AnyBlock
from hessian_spectra.curvature.stability import (
    PreconditionedOperator,
    StabilityReference,
    adam_preconditioner,
    stability_reference,
)
from hessian_spectra.errors import InputError
from hessian_spectra.io import json_safe
from hessian_spectra.krylov.lanczos import lanczos, lanczos_lockstep, start_vector
from torch import nn

__all__ = ["SharpnessRecord", "SharpnessTracker", "head_of_batch"]

TRACES = ("hutchinson", "hutch++")


@dataclass(frozen=True)
class SharpnessRecord:
    """One tracker measurement. Eigenvalues come with their Ritz residual bounds and ``converged``;
    ``hvps`` counts full Hessian-vector products (a lockstep block step counts one), ``warm`` whether
    Lanczos started from the previous Ritz vectors; ``reference`` is the edge-of-stability threshold;
    ``settings`` the tracker settings that produced it (seed, tolerance, batch size, ...)."""

    step: int
    loss: float | None
    lambda_max: float
    lambda_max_residual: float
    converged: bool
    lanczos_steps: int
    warm: bool
    hvps: int
    seconds: float
    reference: StabilityReference
    lambda_min: float | None = None
    lambda_min_residual: float | None = None
    preconditioned_lambda_max: float | None = None
    preconditioned_residual: float | None = None
    preconditioned_converged: bool | None = None
    block_lambda_max: dict[str, float] | None = None
    trace: float | None = None
    trace_stderr: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["reference"] = self.reference.to_dict()
        d["notes"] = list(self.notes)
        return json_safe(d)

    def log_values(self, prefix: str = "sharpness/") -> dict[str, float]:
        """Flat float values for a logger (Trainer.log, TensorBoard, W&B): the measured eigenvalues,
        2/lr and the optimizer's threshold; blocks as ``{prefix}block/<name>``."""
        ref = self.reference
        vals: dict[str, float | None] = {
            "lambda_max": self.lambda_max,
            "lambda_min": self.lambda_min,
            "preconditioned_lambda_max": self.preconditioned_lambda_max,
            "trace": self.trace,
            "two_over_lr": ref.two_over_lr,
            "threshold": ref.threshold,
            "lanczos_steps": float(self.lanczos_steps),
            "hvps": float(self.hvps),
        }
        out = {f"{prefix}{k}": float(v) for k, v in vals.items() if v is not None and math.isfinite(v)}
        for name, lam in (self.block_lambda_max or {}).items():
            out[f"{prefix}block/{name}"] = float(lam)
        return out


def head_of_batch(batch: Any, n: int) -> Any:
    """The first ``n`` examples of a batch (tensors sliced on dim 0, recursively; others kept)."""
    if isinstance(batch, torch.Tensor):
        return batch[:n] if batch.ndim else batch
    if isinstance(batch, Mapping):
        return {k: head_of_batch(v, n) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(head_of_batch(v, n) for v in batch)
    return batch


@contextlib.contextmanager
def _rng_preserved(model: nn.Module) -> Iterator[None]:
    """Fork the CPU RNG and that of every CUDA device the model uses; restored on exit."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        yield


class SharpnessTracker:
    """Top Hessian eigenvalue (and friends) every ``every`` steps of a training loop, warm-started.

    ``loss(model, batch)`` returns the batch's mean loss (None: the model output's ``.loss``, HF style).
    Batches: fixed ``batches`` given here (the usual choice: sharpness on one fixed subset, comparable
    across steps), else the ``batch`` passed to :meth:`step`; ``max_examples`` keeps the first examples
    only (cost scales with it). Extras on request: ``lambda_min``, ``blocks`` (``"tensor"`` or a Block
    list: per-block lambda_max by lockstep Lanczos), ``trace`` (``"hutchinson"`` or ``"hutch++"`` with
    ``trace_matvecs`` products, same seed every time so the curve is smooth), ``preconditioned``
    (Adam's lambda_max(P^-1 H): ``"auto"`` = when the optimizer is an Adam).

    Lanczos stops when the Ritz residual of each requested eigenvalue is below ``tol`` times its size
    (the eigenvalue is then within that residual of a true one, usually far closer), or after
    ``max_steps``. ``warm_start``: start from the previous top (and bottom) Ritz vectors plus ``noise``
    (relative norm) of a seeded Gaussian vector, which keeps every direction in the Krylov space so a
    new top eigenvalue can still be found. ``jsonl``: a file each record is appended to as one line.
    """

    def __init__(
        self,
        loss: Callable[[nn.Module, Any], torch.Tensor] | None = None,
        every: int = 50,
        *,
        batches: Sequence[Any] | None = None,
        optimizer: Any = None,
        lr: float | None = None,
        lambda_min: bool = False,
        blocks: str | Sequence[AnyBlock] | None = None,
        trace: str | None = None,
        trace_matvecs: int = 30,
        preconditioned: bool | str = "auto",
        tol: float = 1e-3,
        max_steps: int = 30,
        warm_start: bool = True,
        noise: float = 1e-2,
        max_examples: int | None = None,
        params: Sequence[str] | None = None,
        dtype: torch.dtype | None = None,
        seed: int = 0,
        jsonl: str | Path | None = None,
    ):
        if int(every) < 1:
            raise InputError("every", f"must be >= 1, got {every}")
        if trace is not None and trace not in TRACES:
            raise InputError("trace", f"must be one of {', '.join(TRACES)} or None, got {trace!r}")
        if isinstance(blocks, str) and blocks != "tensor":
            raise InputError("blocks", f"must be 'tensor' or a list of blocks, got {blocks!r}")
        if preconditioned not in (True, False, "auto"):
            raise InputError("preconditioned", f"must be True, False or 'auto', got {preconditioned!r}")
        if not (0 < tol < 1) or int(max_steps) < 1 or int(trace_matvecs) < 3 or not (0 <= noise < 1):
            raise InputError(None, "need 0 < tol < 1, max_steps >= 1, trace_matvecs >= 3 and 0 <= noise < 1")
        if max_examples is not None and int(max_examples) < 1:
            raise InputError("max_examples", f"must be >= 1, got {max_examples}")
        self.loss, self.every = loss, int(every)
        self.batches = None if batches is None else list(batches)
        self.optimizer, self.lr = optimizer, lr
        self.lambda_min, self.blocks, self.trace = bool(lambda_min), blocks, trace
        self.trace_matvecs, self.preconditioned = int(trace_matvecs), preconditioned
        self.tol, self.max_steps, self.warm_start, self.noise = float(tol), int(max_steps), warm_start, noise
        self.max_examples = max_examples
        self.params, self.dtype, self.seed = params, dtype, int(seed)
        self.jsonl = None if jsonl is None else Path(jsonl)
        self.history: list[SharpnessRecord] = []
        self._calls = 0
        self._vectors: dict[str, torch.Tensor] = {}  # previous Ritz vectors: "hessian", "precond", blocks

    def settings(self) -> dict[str, Any]:
        """What changes the numbers (recorded in every record): seed, tolerance, budget, warm start, batch."""
        return {
            "every": self.every, "seed": self.seed, "tol": self.tol, "max_steps": self.max_steps,
            "warm_start": self.warm_start, "noise": self.noise, "max_examples": self.max_examples,
            "fixed_batches": self.batches is not None, "trace": self.trace,
            "trace_matvecs": self.trace_matvecs if self.trace else None,
            "dtype": None if self.dtype is None else str(self.dtype).removeprefix("torch."),
        }  # fmt: skip

    def due(self, step: int) -> bool:
        """Whether :meth:`step` measures at this step (every ``every`` steps, step 0 included)."""
        return int(step) % self.every == 0

    def step(self, model: nn.Module, batch: Any = None, *, step: int | None = None, optimizer: Any = None):
        """Measure when ``step`` is due (``step`` None: this tracker counts calls); returns the
        :class:`SharpnessRecord`, or None when not due."""
        step = self._calls if step is None else int(step)
        self._calls += 1
        if not self.due(step):
            return None
        return self.measure(model, batch, step=step, optimizer=optimizer)

    # ------------------------------------------------------------------------------------------
    def _data(self, batch: Any) -> list[Any]:
        if self.batches is not None:
            data = self.batches
        elif batch is not None:
            data = [batch]
        else:
            raise InputError(None, "no batch: pass batches= to the tracker or a batch to step()")
        if self.max_examples is not None:
            data = [head_of_batch(b, int(self.max_examples)) for b in data]
        return data

    def _start(self, key: str, dim: int, index: int) -> torch.Tensor | None:
        """Warm start for chain ``key`` (None: cold, e.g. the first run or a changed model)."""
        prev = self._vectors.get(key)
        if not self.warm_start or prev is None or prev.shape[-1] != dim:
            return None
        return start_vector(prev, noise=self.noise, seed=self.seed + 7919 * index + len(key))

    def _eig(self, op: Any, key: str, which: str, index: int):
        v0 = self._start(key, op.dim, index)
        res = lanczos(
            op, 1, which=which, tol=self.tol, max_steps=self.max_steps, seed=self.seed, v0=v0,
            return_vectors=True,
        )  # fmt: skip
        vecs = [v for v in (res.top_vectors, res.bottom_vectors) if v is not None]
        self._vectors[key] = torch.cat(vecs).detach()
        return res, v0 is not None

    def measure(self, model: nn.Module, batch: Any = None, *, step: int = 0, optimizer: Any = None):
        """Measure now (whatever the step); see the class docstring. Appends to :attr:`history`.

        A non-finite loss or HVP (a diverged run) gives a record with NaN values and a note instead of an
        exception, so a training loop is not stopped by its own monitor; bad settings still raise."""
        optimizer = optimizer if optimizer is not None else self.optimizer
        started = time.perf_counter()
        try:
            record = self._measure(model, batch, int(step), optimizer, started)
        except FloatingPointError as err:
            nan = math.nan
            record = SharpnessRecord(
                step=int(step), loss=None, lambda_max=nan, lambda_max_residual=nan, converged=False,
                lanczos_steps=0, warm=False, hvps=0, seconds=time.perf_counter() - started,
                reference=stability_reference(optimizer, self.lr), settings=self.settings(),
                notes=(f"not measured: {err} (a NaN/Inf loss, gradient or weight)",),
            )  # fmt: skip
        self.history.append(record)
        if self.jsonl is not None:
            self.jsonl.parent.mkdir(parents=True, exist_ok=True)
            with self.jsonl.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record.to_dict(), allow_nan=False) + "\n")
        return record

    def _measure(self, model: nn.Module, batch: Any, step: int, optimizer: Any, started: float):
        import warnings

        from hessian_spectra.curvature.hessian import HessianOperator
        from hessian_spectra.errors import ConvergenceWarning

        index = len(self.history)
        notes: list[str] = []
        with _rng_preserved(model), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # reported as converged=False instead
            op = HessianOperator(model, self._data(batch), self.loss, params=self.params, dtype=self.dtype)
            which = "both" if self.lambda_min else "largest"
            res, warm = self._eig(op, "hessian", which, index)
            hvps = res.num_matvecs
            extra: dict[str, Any] = {}
            ref = stability_reference(optimizer, self.lr)
            want_pre = self.preconditioned is True or (
                self.preconditioned == "auto" and ref.on == "preconditioned_lambda_max"
            )
            if want_pre:
                named = dict(model.named_parameters())
                diag = (
                    None
                    if optimizer is None
                    else adam_preconditioner(optimizer, [named[n] for n in op.param_names])
                )
                if diag is None:
                    notes.append("preconditioned lambda_max skipped: no Adam second moments yet (or no Adam)")
                else:
                    pre, _ = self._eig(PreconditionedOperator(op, diag), "precond", "largest", index)
                    hvps += pre.num_matvecs
                    extra.update(
                        preconditioned_lambda_max=pre.lambda_max,
                        preconditioned_residual=pre.top_residuals[0],
                        preconditioned_converged=pre.converged,
                    )
            if self.blocks is not None:
                lams, calls = self._block_lambdas(op, index)
                extra["block_lambda_max"] = lams
                hvps += calls
            if self.trace is not None:
                from hessian_spectra.krylov.trace import hutchinson, hutchpp

                if self.trace == "hutchinson":
                    est = hutchinson(op, num_probes=self.trace_matvecs, seed=self.seed)
                else:
                    est = hutchpp(op, num_matvecs=self.trace_matvecs, seed=self.seed)
                extra.update(trace=est.value, trace_stderr=est.stderr)
                hvps += est.num_matvecs
            loss_value = op.loss_value
            notes.extend(n for n in op.notes if not n.startswith("model has modules in train mode"))
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"the loss is {loss_value}")
        return SharpnessRecord(
            step=int(step), loss=loss_value, lambda_max=float(res.lambda_max),
            lambda_max_residual=float(res.top_residuals[0]), converged=bool(res.converged),
            lanczos_steps=res.steps, warm=warm, hvps=int(hvps), seconds=time.perf_counter() - started,
            reference=ref, lambda_min=res.lambda_min,
            lambda_min_residual=res.bottom_residuals[0] if res.bottom_residuals else None,
            notes=tuple(dict.fromkeys(notes)), settings=self.settings(), **extra,
        )  # fmt: skip

    def _block_lambdas(self, op: Any, index: int) -> tuple[dict[str, float], int]:
        from hessian_spectra.curvature.block_builders import parameter_blocks

        blocks = parameter_blocks(op) if self.blocks == "tensor" else list(self.blocks)  # type: ignore[arg-type]
        bd = op.block_diagonal(blocks)
        v0s = [self._start(f"block:{b.name}", b.numel, index) for b in blocks]
        results = lanczos_lockstep(
            bd, 1, which="largest", tol=self.tol, max_steps=self.max_steps, seed=self.seed, v0s=v0s,
            return_vectors=True,
        )  # fmt: skip
        for b, r in zip(blocks, results, strict=True):
            if r.top_vectors is not None:
                self._vectors[f"block:{b.name}"] = r.top_vectors.detach()
        return {b.name: float(r.lambda_max) for b, r in zip(blocks, results, strict=True)}, bd.num_matvecs
