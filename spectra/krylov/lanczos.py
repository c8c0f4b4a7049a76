"""Lanczos for extreme eigenvalues of a symmetric operator: ``lanczos``, ``lanczos_tridiagonal`` and
``lanczos_lockstep``, with their defaults (tolerance per dtype, step budget) and seeding.

Belongs here: the drivers that run chains (:mod:`hessian_spectra.krylov.chain`) until the stopping
rule (:mod:`hessian_spectra.krylov.convergence`) is met and report a
:class:`~hessian_spectra.krylov.result.LanczosResult`.
Design notes: spectra/docs/lanczos.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from hessian_spectra.krylov.chain import _POLICIES, Reorth, _Chain
from hessian_spectra.krylov.convergence import _Tracker
from hessian_spectra.krylov.linop import LinearOperator, MultiOperator
from hessian_spectra.krylov.result import LanczosResult, _finish

Which = Literal["both", "largest", "smallest"]

#: Default relative residual tolerance per operator dtype (about 50x the dtype's unit roundoff at least:
#: a float32 operator cannot resolve Ritz residuals below ~1e-7 of its norm).
DEFAULT_TOL: dict[torch.dtype, float] = {
    torch.float64: 1e-10,
    torch.float32: 1e-6,
    torch.float16: 5e-3,
    torch.bfloat16: 3e-2,
}


def default_tol(dtype: torch.dtype) -> float:
    """The residual tolerance ``lanczos`` uses when none is given, for an operator of ``dtype``."""
    return DEFAULT_TOL.get(dtype, 1e-6)


def default_max_steps(dim: int, k: int) -> int:
    """Step budget used when none is given: ``min(dim, max(60, 20k + 50), 400)``.

    Stopping is adaptive (residuals are checked every step), so a generous cap costs nothing when the
    extremes converge early; Hessian spectra often have clustered ends (bottom-5 of a 451-parameter MLP
    needs ~107 steps), which a tight cap would report as unconverged.
    """
    return int(min(dim, max(60, 20 * k + 50), 400))


def block_seed(seed: int, index: int) -> int:
    """Seed for block ``index`` derived from ``seed`` alone, so a block's random vectors do not depend
    on which other blocks are present (``lanczos_lockstep``/``slq_lockstep`` use it)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(seed))


def random_unit_vector(dim: int, generator: torch.Generator) -> torch.Tensor:
    """A float64 CPU Gaussian vector of norm one, drawn from ``generator``."""
    v = torch.randn(dim, generator=generator, dtype=torch.float64)
    return v / torch.linalg.vector_norm(v)


def start_vector(
    subspace: torch.Tensor, *, noise: float = 0.0, seed: int = 0, weights: Sequence[float] | None = None
) -> torch.Tensor:
    """A float64 unit start vector whose Krylov space holds an approximate invariant subspace (warm start).

    ``subspace`` is ``(dim,)`` or ``(r, dim)``: e.g. the previous run's Ritz vectors. Its rows are
    orthonormalised (float64 QR) and summed with ``weights`` (default equal); for near-eigenvectors with
    distinct eigenvalues the first r Krylov vectors then span the whole subspace. ``noise`` > 0 adds that
    fraction (relative norm) of a Gaussian vector drawn from ``seed``, so every eigen-direction keeps a
    component and a new extreme eigenvalue can still be found. See spectra/docs/lanczos.md (warm starts).
    """
    sub = subspace.detach().to(torch.float64)
    if sub.ndim == 1:
        sub = sub[None, :]
    if sub.ndim != 2 or sub.shape[0] < 1 or sub.shape[1] < 1:
        raise ValueError(f"subspace must be (dim,) or (r, dim), got shape {tuple(subspace.shape)}")
    if not bool(torch.isfinite(sub).all()):
        raise ValueError("subspace has non-finite entries")
    if not (math.isfinite(noise) and noise >= 0.0):
        raise ValueError(f"noise must be a finite number >= 0, got {noise}")
    q, r = torch.linalg.qr(sub.T)
    keep = torch.abs(torch.diagonal(r)) > 1e-12 * max(float(torch.abs(r).max()), 1e-300)
    if not bool(keep.any()):
        raise ValueError("subspace is zero")
    q = q[:, keep]
    w = torch.ones(q.shape[1], dtype=torch.float64, device=q.device)
    if weights is not None:
        w = torch.as_tensor(list(weights), dtype=torch.float64, device=q.device)
        if w.numel() != sub.shape[0]:
            raise ValueError(f"weights has {w.numel()} entries for {sub.shape[0]} subspace rows")
        w = w[keep]
    v = q @ w
    v = v / torch.linalg.vector_norm(v)
    if noise > 0.0:
        v = v + noise * random_unit_vector(v.numel(), _generator(seed)).to(v.device)
        v = v / torch.linalg.vector_norm(v)
    return v


def _start(v0: torch.Tensor | None, dim: int, gen: torch.Generator) -> torch.Tensor:
    """The chain's first vector: Gaussian from ``gen`` (default), ``v0`` itself, or the warm start of a
    ``(r, dim)`` subspace (:func:`start_vector`)."""
    if v0 is None:
        return random_unit_vector(dim, gen)
    return start_vector(v0) if v0.ndim == 2 else v0


def _validate(k: int, which: str, max_steps: int | None, policy: str = "full") -> None:
    if policy not in _POLICIES:
        raise ValueError(f"reorthogonalize must be 'full' or 'partial', got {policy!r}")
    if which not in ("both", "largest", "smallest"):
        raise ValueError(f"which must be 'both', 'largest' or 'smallest', got {which!r}")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if max_steps is not None and int(max_steps) < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")


def _new_chain(
    dim: int,
    dtype: torch.dtype,
    device: torch.device,
    k: int,
    seed: int,
    v0: torch.Tensor | None,
    max_steps: int | None,
    tol: float,
    policy: Reorth = "full",
) -> _Chain:
    gen = _generator(seed)
    start = _start(v0, dim, gen)
    steps = default_max_steps(dim, k) if max_steps is None else min(int(max_steps), dim)
    return _Chain(
        dim, dtype, device, start, max_steps=steps, generator=gen, breakdown_rtol=0.5 * tol, policy=policy
    )


def lanczos(
    op: LinearOperator,
    k: int = 5,
    *,
    which: Which = "both",
    tol: float | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    v0: torch.Tensor | None = None,
    return_vectors: bool = False,
    progress: Callable[[int, int], None] | None = None,
    reorthogonalize: Reorth = "partial",
) -> LanczosResult:
    """The ``k`` largest and/or smallest eigenvalues of a symmetric ``op`` by Lanczos.

    Runs as many steps as the request needs: after each step the Ritz residuals |beta_m s_{m,i}| of the
    requested extremes are checked against ``tol * max|theta|`` (``tol=None``: :data:`DEFAULT_TOL` for
    the operator dtype). Stops early on an exhausted Krylov space (then the values are exact). If
    ``max_steps`` (default :func:`default_max_steps`) runs out first, ``converged=False`` and a
    :class:`ConvergenceWarning` is issued. ``progress(step, max_steps)`` is called after each matvec.
    The start vector is Gaussian from ``seed`` unless ``v0`` is given: a ``(dim,)`` start vector, or a
    ``(r, dim)`` initial subspace (e.g. the previous run's ``top_vectors``/``bottom_vectors``: a warm
    start, see :func:`start_vector`; add noise there yourself). ``reorthogonalize``: ``"partial"``
    (PRO: whole-basis reorthogonalisation only when the omega estimate of lost orthogonality passes
    sqrt(eps); same Ritz values to working precision, far fewer passes over the basis) or ``"full"``
    (every step).
    """
    _validate(k, which, max_steps, reorthogonalize)
    tol = default_tol(op.dtype) if tol is None else float(tol)
    chain = _new_chain(int(op.dim), op.dtype, op.device, int(k), seed, v0, max_steps, tol, reorthogonalize)
    tracker = _Tracker(chain, int(k), which, tol)
    while not chain.done:
        chain.push(op.matvec(chain.vector()))
        if progress is not None:
            progress(chain.steps, chain.max_steps)
        if tracker.update():
            break
    converged, info = tracker.final()
    return _finish(chain, int(k), which, tol, seed, converged, info, return_vectors)


def lanczos_tridiagonal(
    op: LinearOperator,
    steps: int,
    *,
    v0: torch.Tensor,
    reorthogonalize: bool | Reorth = True,
    return_basis: bool = False,
) -> tuple[np.ndarray, np.ndarray, torch.Tensor | None]:
    """``steps`` Lanczos steps from ``v0``: float64 diagonal ``alphas`` (m,) and off-diagonal
    ``betas`` (m-1,) of T_m, and the basis (m, dim) if asked (needs ``reorthogonalize``).

    Stops early (m < steps) when the Krylov space of ``v0`` is invariant; T_m is then exact for it.
    No restart: this is the routine stochastic Lanczos quadrature uses for one probe.
    ``reorthogonalize``: True or ``"full"`` (every step), ``"partial"`` (PRO, see :func:`lanczos`), False.
    """
    if isinstance(reorthogonalize, str):
        _validate(1, "both", None, reorthogonalize)
    policy: Reorth = "partial" if reorthogonalize == "partial" else "full"
    reorthogonalize = bool(reorthogonalize)
    if return_basis and not reorthogonalize:
        raise ValueError("return_basis needs reorthogonalize=True (the basis is not kept otherwise)")
    chain = _Chain(
        int(op.dim),
        op.dtype,
        op.device,
        v0,
        max_steps=min(int(steps), int(op.dim)),
        reorthogonalize=reorthogonalize,
        restart=False,
        policy=policy,
    )
    while not chain.done:
        chain.push(op.matvec(chain.vector()))
    a, b = chain.tridiagonal()
    return a, b, (chain.basis.clone() if return_basis else None)


def _block_ids(indices: Sequence[int] | None, n: int) -> list[int]:
    """The per-block seed indices of a lockstep run: ``indices`` (checked) or ``0..n-1``."""
    if indices is None:
        return list(range(n))
    ids = [int(i) for i in indices]
    if len(ids) != n:
        raise ValueError(f"indices has {len(ids)} entries for {n} blocks")
    return ids


def lanczos_lockstep(
    mop: MultiOperator,
    k: int = 5,
    *,
    which: Which = "both",
    tol: float | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    return_vectors: bool = False,
    progress: Callable[[int, int], None] | None = None,
    indices: Sequence[int] | None = None,
    reorthogonalize: Reorth = "partial",
    v0s: Sequence[torch.Tensor | None] | None = None,
) -> list[LanczosResult]:
    """``lanczos`` on every block of ``mop`` at once: one ``matvec_many`` per step advances all chains
    still running (finished ones pass ``None``). Block ``b`` starts from seed ``block_seed(seed, b)``,
    so its result equals ``lanczos(block_b, seed=block_seed(seed, b))`` exactly. ``indices[b]``
    replaces ``b`` in the seed (a subset of a larger block list then draws that list's vectors).
    ``reorthogonalize`` as in :func:`lanczos`. ``v0s[b]`` (optional, None entries allowed) is block
    ``b``'s start vector or initial subspace, as ``v0`` of :func:`lanczos` (warm starts per block).
    """
    _validate(k, which, max_steps, reorthogonalize)
    tol = default_tol(mop.dtype) if tol is None else float(tol)
    ids = _block_ids(indices, len(mop.dims))
    if v0s is not None and len(v0s) != len(mop.dims):
        raise ValueError(f"v0s has {len(v0s)} entries for {len(mop.dims)} blocks")
    starts = list(v0s) if v0s is not None else [None] * len(mop.dims)
    chains = [
        _new_chain(
            int(d),
            mop.dtype,
            mop.device,
            int(k),
            block_seed(seed, ids[b]),
            starts[b],
            max_steps,
            tol,
            reorthogonalize,
        )
        for b, d in enumerate(mop.dims)
    ]
    trackers = [_Tracker(c, int(k), which, tol) for c in chains]
    active = [not c.done for c in chains]
    budget = max((c.max_steps for c in chains), default=0)
    it = 0
    while any(active):
        outs = mop.matvec_many([c.vector() if a else None for c, a in zip(chains, active, strict=True)])
        it += 1
        for b, (c, out) in enumerate(zip(chains, outs, strict=True)):
            if not active[b]:
                continue
            if out is None:
                raise RuntimeError(f"matvec_many returned None for running block {mop.names[b]!r}")
            c.push(out)
            if trackers[b].update():
                active[b] = False
        if progress is not None:
            progress(it, budget)
    results = []
    for b, c in enumerate(chains):
        conv, info = trackers[b].final()
        results.append(
            _finish(
                c,
                int(k),
                which,
                tol,
                block_seed(seed, ids[b]),
                conv,
                info,
                return_vectors,
                name=str(mop.names[b]),
            )
        )
    return results


__all__: Sequence[str] = [
    "DEFAULT_TOL",
    "block_seed",
    "default_max_steps",
    "default_tol",
    "lanczos",
    "lanczos_lockstep",
    "lanczos_tridiagonal",
    "random_unit_vector",
    "start_vector",
]
