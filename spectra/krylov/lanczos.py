"""Lanczos for extreme eigenvalues of a symmetric operator, with float64 bookkeeping.

Every scalar the recurrence produces (alpha, beta) and the tridiagonal eigensolve are float64 whatever
the operator dtype; vectors handed to ``matvec`` are in the operator's dtype and device. The basis is
kept in the operator dtype (float32 for half-precision operators, whose rounding would wreck
orthogonality), and each step works on it in that dtype, in place: q_{j+1} is formed in its own basis
row. The dot products and norms behind alpha and beta sum in short blocks in the basis dtype and add the
block sums in float64 (about 1e-9 relative on millions of float32 entries, where a float32 BLAS dot or
norm loses 1e-6 to 3e-4), so they are as accurate as the float32 vectors they read. Reorthogonalisation
is classical Gram-Schmidt, repeated when it cancels, in the basis dtype. Two policies: ``"full"``
reorthogonalises every step against the whole basis; ``"partial"`` (Simon 1984, PRO) tracks the omega
recurrence estimating |q_j^T q_k| in float64 (O(m) scalars per step) and reorthogonalises against the
whole basis only when the largest estimate exceeds sqrt(eps) of the basis dtype (and at the step after,
as PRO prescribes). PRO keeps the basis semi-orthogonal (|q_j^T q_k| <= sqrt(eps)), which is enough for
T_m to be the projection of the operator on an orthonormal basis of the Krylov space to working
precision (Simon 1984): Ritz values are as accurate as with full reorthogonalisation, without spurious
copies, and the residual bounds below hold up to O(eps ||A||).

Stopping is by Ritz residuals |beta_m s_{m,i}| (each Ritz value is within its residual of a true
eigenvalue), not by a fixed step count. Known limit of any single-vector Krylov method: an eigenvalue
of exact multiplicity > 1 is usually seen once until the rest of the space is exhausted.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.linalg
import torch
from hessian_spectra.errors import ConvergenceWarning
from hessian_spectra.io import json_safe
from hessian_spectra.krylov.linop import LinearOperator, MultiOperator

Which = Literal["both", "largest", "smallest"]

#: Default relative residual tolerance per operator dtype (about 50x the dtype's unit roundoff at least:
#: a float32 operator cannot resolve Ritz residuals below ~1e-7 of its norm).
DEFAULT_TOL: dict[torch.dtype, float] = {
    torch.float64: 1e-10,
    torch.float32: 1e-6,
    torch.float16: 5e-3,
    torch.bfloat16: 3e-2,
}

# Rows of a low-precision basis upcast to float64 at once when forming Ritz vectors (memory cap).
_CHUNK_ELEMENTS = 1 << 24
# Basis rows per allocation (the basis grows by whole chunks, never by copying).
_ROWS_PER_CHUNK = 16
# Dot products and squared norms sum the elementwise products in blocks of this many entries in the
# basis dtype, the block sums in float64 (see _Chain._dot).
_SUM_BLOCK = 4096
# Reorthogonalise a second time when one pass shrank ||w|| below this fraction (Daniel-Gragg-Kaufman-Stewart).
_DGKS = 1.0 / math.sqrt(2.0)

Reorth = Literal["full", "partial"]
_POLICIES = ("full", "partial")


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


def basis_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the Krylov basis is stored in: the operator's, but at least float32."""
    return dtype if dtype in (torch.float64, torch.float32) else torch.float32


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


def _matvec_noise(dtype: torch.dtype, dim: int, anorm: float) -> float:
    """Norm below which a new Lanczos direction is rounding noise of the matvec (a breakdown).

    float32/float64: ``10 eps ||A|| sqrt(dim)`` (worst-case accumulation). 16-bit operators accumulate in
    float32 inside their kernels and round each output entry once, so their noise is ``eps16 ||A||``
    plus the float32 term; ``sqrt(dim) * eps16`` would exceed ||A|| and call every step a breakdown.
    """
    a = max(anorm, 1e-300)
    if dtype in (torch.float16, torch.bfloat16):
        return float(torch.finfo(dtype).eps) * a + 10.0 * float(
            torch.finfo(torch.float32).eps
        ) * a * math.sqrt(dim)
    eps = float(torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-16
    return 10.0 * eps * a * math.sqrt(dim)


class _Chain:
    """One Lanczos recurrence advanced a step at a time (so several can run in lockstep).

    ``vector()`` gives q_j in the operator dtype/device; ``push(A q_j)`` records alpha_j and beta_j and
    forms q_{j+1}. On breakdown (beta ~ 0: the Krylov space is invariant) the chain either restarts with
    a random vector orthogonal to the basis (``restart=True``, beta recorded as exactly 0) or stops.

    A step touches each long vector as few times as it can: q_{j+1} is formed in place in its own basis
    row, in the basis dtype (no work copies, no dim-sized allocation per step: one scratch vector serves
    the dot products), and the step's scalars reach the host in one transfer (one device sync per step
    unless it reorthogonalises).
    """

    def __init__(
        self,
        dim: int,
        op_dtype: torch.dtype,
        device: torch.device,
        v0: torch.Tensor,
        *,
        max_steps: int,
        reorthogonalize: bool = True,
        restart: bool = True,
        generator: torch.Generator | None = None,
        breakdown_rtol: float = 0.0,
        policy: Reorth = "full",
    ):
        if policy not in _POLICIES:
            raise ValueError(f"reorthogonalize must be 'full' or 'partial', got {policy!r}")
        self.dim = dim
        self.op_dtype = op_dtype
        self.device = torch.device(device)
        self.store_dtype = basis_dtype(op_dtype)
        self.max_steps = max_steps
        self.reorthogonalize = reorthogonalize
        self.restart = restart
        self.generator = generator
        self.breakdown_rtol = breakdown_rtol  # beta <= this * max|alpha|: invariant to tolerance
        self.max_alpha = 0.0
        self.alphas: list[float] = []
        self.betas: list[float] = []  # betas[j] couples q_j and q_{j+1}
        self.dropped = 0.0  # largest beta treated as zero at a breakdown
        self.anorm = 0.0  # running estimate of ||A|| from the recurrence
        self.exhausted = False
        self.starts = [0]  # index where each Krylov block starts (a new one after each restart)
        self.policy = policy
        self.num_reorth = 0  # steps that reorthogonalised against the whole basis
        # PRO bookkeeping: omega[k] estimates |q_j^T q_k| for the newest q_j (omega[j] = 1), omega_prev
        # the same for q_{j-1}. The local rounding level is that of the basis or the operator, whichever
        # is coarser (a float16 operator's rounding exceeds sqrt(eps32): PRO then reorthogonalises always).
        self._eps_local = max(float(torch.finfo(self.store_dtype).eps), float(torch.finfo(op_dtype).eps))
        self._omega_limit = math.sqrt(float(torch.finfo(self.store_dtype).eps))
        self._omega = np.ones(1)
        self._omega_prev = np.zeros(0)
        self._force_next = False  # PRO: reorthogonalise the next vector too
        self.max_omega = 0.0  # largest orthogonality-loss estimate seen (partial policy)
        self._noise = 0.0  # largest measured local rounding term |q_{j-1}^T w| (partial policy)
        # Storage: row i holds q_i; row n (one past the last vector) is where q_{n} is formed. With the
        # whole basis kept, rows live in fixed-size chunks allocated as needed (growing never copies: a
        # doubling copy held old + new basis at once, +70% peak memory on a 2M-parameter model); without,
        # three rows are reused in turn (q_{j-1}, q_j and the one being formed).
        self._ring = not reorthogonalize
        self._chunks: list[torch.Tensor] = []
        self._n = 0  # vectors stored
        # squared norms below this lose digits to underflow in the basis dtype: recomputed in float64
        finfo = torch.finfo(self.store_dtype)
        self._tiny_sq = float(finfo.tiny) / float(finfo.eps)
        self._scratch: torch.Tensor | None = None
        self._released = False
        q = v0.detach().to(device=self.device, dtype=torch.float64).reshape(-1)
        if q.numel() != dim:
            raise ValueError(f"v0 has {q.numel()} entries, the operator has dim {dim}")
        norm = float(torch.linalg.vector_norm(q))
        if not math.isfinite(norm) or norm == 0.0:
            raise ValueError("v0 must be a finite nonzero vector")
        self._slot(0).copy_(q / norm)
        self._n = 1

    # -- basis storage -------------------------------------------------------------------------
    def _slot(self, i: int) -> torch.Tensor:
        """Row i of the storage (a view), allocating its chunk on first use."""
        if self._ring:
            if not self._chunks:
                self._chunks.append(torch.empty(3, self.dim, dtype=self.store_dtype, device=self.device))
            return self._chunks[0][i % 3]
        c = _ROWS_PER_CHUNK
        while i >= len(self._chunks) * c:  # rows 0..max_steps: the basis plus the row being formed
            rows = min(c, self.max_steps + 1 - len(self._chunks) * c)
            self._chunks.append(torch.empty(rows, self.dim, dtype=self.store_dtype, device=self.device))
        return self._chunks[i // c][i % c]

    def _blocks(self, rows: int) -> list[torch.Tensor]:
        """The first ``rows`` stored rows as a list of contiguous (r, dim) views, one per chunk."""
        c = _ROWS_PER_CHUNK
        out = []
        for k, chunk in enumerate(self._chunks):
            take = min(chunk.shape[0], rows - k * c)
            if take <= 0:
                break
            out.append(chunk[:take])
        return out

    @property
    def basis(self) -> torch.Tensor:
        """The stored Lanczos vectors q_0..q_{m-1} (rows), when the full basis is kept."""
        if self._ring:
            raise RuntimeError("the basis is only kept with reorthogonalize=True")
        if self._released:
            raise RuntimeError("the basis of this chain was released")
        return torch.cat(self._blocks(self.steps)) if self.steps else self._chunks[0][:0]

    @property
    def steps(self) -> int:
        return len(self.alphas)

    @property
    def done(self) -> bool:
        return self.exhausted or self.steps >= self.max_steps

    # -- reductions ------------------------------------------------------------------------------
    def _dot(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x^T y as a 0-dim float64 tensor on the device (no sync): products summed pairwise in blocks of
        ``_SUM_BLOCK`` in the basis dtype, the block sums in float64.

        A BLAS dot or norm accumulates in the vector dtype with an error growing with the length: on
        float32 with positive terms, measured 5e-7 (dot) and 9e-6 (squared norm) relative at 3M entries
        against 4e-10 and 6e-10 here, for one extra pass (an upcast float64 dot costs 7x more). Norms of
        short blocks (no temporary) were 2x cheaper but their float32 square roots doubled the worst
        Ritz-value error on the float32 test spectra.
        """
        if self._scratch is None:
            self._scratch = torch.empty(self.dim, dtype=self.store_dtype, device=self.device)
        t = torch.mul(x, y, out=self._scratch)
        k = self._split(_SUM_BLOCK)
        s = t[:k].view(-1, _SUM_BLOCK).sum(1).sum(dtype=torch.float64)
        return s + t[k:].sum(dtype=torch.float64) if k < self.dim else s

    def _split(self, block: int) -> int:
        """Entries covered by whole blocks of ``block`` (the rest is reduced on its own)."""
        return self.dim - self.dim % block

    def _norm(self, w: torch.Tensor, sq: float | None = None) -> float:
        """||w|| from its squared norm ``sq`` (computed here when None); float64 recompute on under/overflow."""
        if sq is None:
            sq = float(self._dot(w, w))
        if math.isfinite(sq) and sq > self._tiny_sq:
            return math.sqrt(sq)
        return float(torch.linalg.vector_norm(w, dtype=torch.float64))

    def _project_out(self, w: torch.Tensor, rows: int) -> None:
        """w -= Q Q^T w over the first ``rows`` basis vectors (classical Gram-Schmidt: all coefficients
        from the same w; in place, in the basis dtype, no dim-sized temporaries)."""
        blocks = self._blocks(rows)
        coeffs = [torch.mv(b, w) for b in blocks]
        for b, c in zip(blocks, coeffs, strict=True):
            w.addmv_(b.T, c, alpha=-1.0)

    # -- the recurrence --------------------------------------------------------------------------
    def vector(self) -> torch.Tensor:
        """q_j, the vector to multiply next, in the operator dtype."""
        return self._slot(self._n - 1).to(self.op_dtype)

    def push(self, aq: torch.Tensor) -> None:
        """Record A q_j and form q_{j+1} (or stop/restart at a breakdown)."""
        self._push(aq)
        if self.done:  # a finished chain keeps its basis (Ritz vectors) but not its work vector
            self._scratch = None

    def release(self) -> None:
        """Drop the basis and work vectors, keeping alphas/betas (all SLQ needs once a chain is done)."""
        self._chunks = []
        self._scratch = None
        self._released = True

    def _push(self, aq: torch.Tensor) -> None:
        if self.done:
            raise RuntimeError("push on a finished Lanczos chain")
        aq = aq.detach().reshape(-1)
        if aq.numel() != self.dim:
            raise ValueError(f"the operator returned {aq.numel()} entries, expected {self.dim}")
        if aq.device != self.device:
            aq = aq.to(self.device)
        n = self._n
        q = self._slot(n - 1)
        qp = self._slot(n - 2) if n >= 2 else None
        w = self._slot(n)  # q_{j+1} is formed in place in its own row
        prev = self.betas[-1] if self.betas else 0.0
        # u = A q_j - beta_{j-1} q_{j-1}, then alpha_j = q_j^T u and w = u - alpha_j q_j (Paige's ordering)
        if qp is not None and prev != 0.0:
            torch.add(aq, qp, alpha=-prev, out=w)
        else:
            w.copy_(aq)
        alpha_t = self._dot(q, w)
        w.addcmul_(q, alpha_t, value=-1.0)  # alpha stays on the device: no sync before the update
        sums = [alpha_t, self._dot(w, w)]
        # the operator's own rounding (a float64 model with float32 kernels inside, say) can exceed eps of
        # its dtype: measure it. q_{j-1}^T w is the local term of the recurrence for k = j-1 (the beta_{j-1}
        # terms cancel), so its size is the rounding level actually present (blocked too: a float32 BLAS dot
        # of these nearly orthogonal vectors measured errors as large as the term itself on the bench model).
        measure = self.reorthogonalize and self.policy == "partial" and qp is not None
        if measure:
            sums.append(self._dot(qp, w))
        vals = torch.stack(sums).tolist()  # the step's one transfer to the host
        alpha = vals[0]
        # any NaN/Inf entry of A q_j makes alpha or ||w|| non-finite, so check the vector only then
        if not (math.isfinite(alpha) and math.isfinite(vals[1])) and not bool(torch.isfinite(aq).all()):
            raise FloatingPointError("the operator returned a non-finite vector (NaN/Inf in the matvec)")
        beta = self._norm(w, vals[1])
        self.anorm = max(self.anorm, math.sqrt(alpha * alpha + beta * beta + prev * prev))
        if self.reorthogonalize:
            reorth = True
            if self.policy == "partial":
                if measure:
                    self._noise = max(self._noise, abs(vals[2]))
                omega = self._next_omega(alpha, beta)
                peak = float(np.max(np.abs(omega[:-1]))) if omega.size > 1 else 0.0
                if math.isfinite(peak):
                    self.max_omega = max(self.max_omega, peak)
                reorth = self._force_next or not (peak <= self._omega_limit)
                # PRO: a reorthogonalised q_{j+1} is followed by a reorthogonalised q_{j+2} (q_j kept its
                # loss and would pass it on through the three-term recurrence)
                self._force_next = reorth and not self._force_next
            if reorth:
                # against the whole basis; a second pass only when the first cancelled a lot (the DGKS
                # criterion ARPACK uses: ||w|| dropped below 1/sqrt(2) of its value)
                before = beta
                self._project_out(w, n)
                beta = self._norm(w)
                if beta < _DGKS * before:
                    self._project_out(w, n)
                    beta = self._norm(w)
                self.num_reorth += 1
                if self.policy == "partial":
                    omega = self._reset_omega()
            if self.policy == "partial":
                self._omega_prev, self._omega = self._omega, omega
        self.alphas.append(alpha)
        self.max_alpha = max(self.max_alpha, abs(alpha))
        threshold = max(
            _matvec_noise(self.op_dtype, self.dim, self.anorm), self.breakdown_rtol * self.max_alpha
        )
        if self.steps >= self.dim:
            self.betas.append(beta)
            self.exhausted = True
            return
        if beta <= threshold:
            self.dropped = max(self.dropped, beta)
            if not (self.restart and self.reorthogonalize) or self.generator is None:
                self.betas.append(beta)
                self.exhausted = True
                return
            for _ in range(3):  # a fresh direction orthogonal to the (invariant) Krylov space
                w.copy_(torch.randn(self.dim, generator=self.generator, dtype=torch.float64))
                self._project_out(w, n)
                self._project_out(w, n)
                rn = self._norm(w)
                if rn > 1e-8:
                    break
            else:
                self.betas.append(beta)
                self.exhausted = True
                return
            self.betas.append(0.0)
            self.starts.append(self.steps)
            self._omega = self._reset_omega()  # r was projected out of the whole basis twice
            self._force_next = False
            if not self.done:
                w.div_(rn)
                self._n += 1
            return
        self.betas.append(beta)
        if not self.done:
            w.div_(beta)
            self._n += 1

    def _reset_omega(self) -> np.ndarray:
        """Estimates for a vector just orthogonalised against the whole basis: rounding level, 1 on itself."""
        omega = np.full(self._n + 1, self._eps_local)
        omega[-1] = 1.0
        return omega

    def _next_omega(self, alpha: float, beta: float) -> np.ndarray:
        """Simon's recurrence for omega_{j+1,k} ~ q_{j+1}^T q_k, k <= j+1, from the rows of q_j, q_{j-1}.

        beta_j w_{j+1,k} = beta_k w_{j,k+1} + (alpha_k - alpha_j) w_{j,k} + beta_{k-1} w_{j,k-1}
        - beta_{j-1} w_{j-1,k}, plus a rounding term of the sign that increases |w| (Simon's worst case):
        the larger of eps ||A|| and the measured |q_{j-1}^T w|; w_{j+1,j} is that term / beta_j.
        """
        j = self._n - 1
        a = np.asarray(self.alphas, dtype=np.float64)  # alpha_0..alpha_{j-1}; alpha_j is the argument
        b = np.asarray(self.betas, dtype=np.float64)  # beta_0..beta_{j-1}
        om, omp = self._omega, self._omega_prev
        new = np.empty(j + 2)
        noise = max(self._eps_local * max(self.anorm, 1e-300), self._noise)
        if beta <= 0.0 or not math.isfinite(beta):
            new[:] = np.inf
        else:
            if j > 0:
                t = b[:j] * om[1 : j + 1] + (a[:j] - alpha) * om[:j]
                t[1:] += b[: j - 1] * om[: j - 1]
                t -= b[j - 1] * omp[:j]
                new[:j] = (t + np.where(t >= 0.0, noise, -noise)) / beta
            new[j] = noise / beta
        new[j + 1] = 1.0
        return new

    def tridiagonal(self) -> tuple[np.ndarray, np.ndarray]:
        """(alphas, off-diagonal betas) of T_m, float64."""
        a = np.asarray(self.alphas, dtype=np.float64)
        b = np.asarray(self.betas[: max(self.steps - 1, 0)], dtype=np.float64)
        return a, b

    @property
    def residual_beta(self) -> float:
        """beta_m, the coupling out of the current Krylov space (0 when it is invariant)."""
        if self.steps == 0:
            return float("nan")
        if self.exhausted and self.steps >= self.dim:
            return 0.0
        return self.betas[self.steps - 1]


def _eig_tridiagonal(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric tridiagonal (alphas, betas)."""
    if alphas.size == 1:
        return alphas.copy(), np.ones((1, 1))
    try:
        return scipy.linalg.eigh_tridiagonal(alphas, betas)
    except (np.linalg.LinAlgError, ValueError):  # pragma: no cover - LAPACK fallback
        t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        return np.linalg.eigh(t)


@dataclass(frozen=True, eq=False)
class LanczosResult:
    """Extreme Ritz values of a symmetric operator with their residual bounds.

    ``top`` is descending, ``bottom`` ascending; ``top_residuals[i]`` bounds |top[i] - lambda| for
    some true eigenvalue lambda (up to O(eps ||A||); with ``reorthogonalize="partial"`` the basis is
    semi-orthogonal, which keeps this true, see the module docstring). ``converged`` says whether every
    requested value met ``residual <= tol * max|theta|``. Sides not requested (``which``) are empty.
    ``num_reorth`` counts the steps that reorthogonalised against the whole basis (``steps`` when full).
    """

    top: tuple[float, ...]
    bottom: tuple[float, ...]
    top_residuals: tuple[float, ...]
    bottom_residuals: tuple[float, ...]
    converged: bool
    steps: int
    num_matvecs: int
    alphas: tuple[float, ...]
    betas: tuple[float, ...]
    ritz_values: tuple[float, ...]
    tol: float
    k: int
    which: str
    seed: int
    dim: int
    exhausted: bool = False
    reorthogonalize: str = "full"
    num_reorth: int = 0
    top_vectors: torch.Tensor | None = field(default=None, repr=False)
    bottom_vectors: torch.Tensor | None = field(default=None, repr=False)

    @property
    def lambda_max(self) -> float | None:
        """Largest Ritz value (None when ``which="smallest"``)."""
        return self.top[0] if self.top else None

    @property
    def lambda_min(self) -> float | None:
        """Smallest Ritz value (None when ``which="largest"``)."""
        return self.bottom[0] if self.bottom else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (vectors left out)."""
        return json_safe(
            {
                "method": "lanczos",
                "k": self.k,
                "which": self.which,
                "dim": self.dim,
                "seed": self.seed,
                "lambda_max": self.lambda_max,
                "lambda_min": self.lambda_min,
                "top": list(self.top),
                "bottom": list(self.bottom),
                "top_residuals": list(self.top_residuals),
                "bottom_residuals": list(self.bottom_residuals),
                "converged": self.converged,
                "exhausted": self.exhausted,
                "tol": self.tol,
                "steps": self.steps,
                "num_matvecs": self.num_matvecs,
                "reorthogonalize": self.reorthogonalize,
                "num_reorth": self.num_reorth,
                "alphas": list(self.alphas),
                "betas": list(self.betas),
                "ritz_values": list(self.ritz_values),
            }
        )


def _check(chain: _Chain, k: int, which: str, tol: float) -> tuple[bool, dict[str, Any]]:
    """Ritz values/residuals of the chain and whether the requested extremes have converged."""
    a, b = chain.tridiagonal()
    theta, s = _eig_tridiagonal(a, b)
    m = theta.size
    scale = float(np.max(np.abs(theta))) if m else 0.0
    floor = max(chain.dropped, float(torch.finfo(chain.op_dtype).eps) * scale)
    res = np.maximum(np.abs(chain.residual_beta * s[-1, :]), floor)
    kk = min(k, m)
    top_idx = np.arange(m - 1, m - 1 - kk, -1)
    bot_idx = np.arange(kk)
    limit = tol * scale
    enough = m >= min(k, chain.dim)
    top_ok = bool(np.all(res[top_idx] <= limit)) if which in ("both", "largest") else True
    bot_ok = bool(np.all(res[bot_idx] <= limit)) if which in ("both", "smallest") else True
    info = {"theta": theta, "s": s, "res": res, "top_idx": top_idx, "bot_idx": bot_idx}
    return bool(enough and top_ok and bot_ok), info


def _changes_extremes(a: np.ndarray, b: np.ndarray, s0: int, s1: int, k: int, which: str, tol: float) -> bool:
    """Whether the closed Krylov block T[s0:s1] moved the requested extremes of the blocks before it.

    A block started from a random vector orthogonal to earlier invariant blocks holds every distinct
    eigenvalue left in the complement; if it changed the top/bottom k, further copies may remain there.
    """
    blk = _eig_tridiagonal(a[s0:s1], b[s0 : s1 - 1])[0]
    prior = _eig_tridiagonal(a[:s0], b[: s0 - 1])[0] if s0 > 0 else np.array([])
    if prior.size < k:
        return True
    slack = tol * max(float(np.max(np.abs(prior))), float(np.max(np.abs(blk))))
    if which in ("both", "largest") and blk[-1] > prior[-k] + slack:
        return True
    return bool(which in ("both", "smallest") and blk[0] < prior[k - 1] - slack)


class _Tracker:
    """Stopping logic for one chain: Ritz residuals, plus multiplicity checks after breakdowns."""

    def __init__(self, chain: _Chain, k: int, which: str, tol: float):
        self.chain, self.k, self.which, self.tol = chain, k, which, tol
        self.pending = False  # a restart found copies: the next block must close before we stop
        self.blocks = 1
        self.converged = False
        self.info: dict[str, Any] | None = None

    def update(self) -> bool:
        """Call after each push; True when the chain should stop."""
        c = self.chain
        if len(c.starts) > self.blocks:
            self.blocks = len(c.starts)
            a, b = c.tridiagonal()
            self.pending = _changes_extremes(a, b, c.starts[-2], c.starts[-1], self.k, self.which, self.tol)
        if c.steps < min(self.k, c.dim) and not c.done:
            return False
        self.converged, self.info = _check(c, self.k, self.which, self.tol)
        if self.pending and not (c.exhausted and c.steps >= c.dim):
            self.converged = False
        return self.converged or c.done

    def final(self) -> tuple[bool, dict[str, Any]]:
        if self.info is None:
            self.converged, self.info = _check(self.chain, self.k, self.which, self.tol)
        return self.converged, self.info


def _ritz_vectors(chain: _Chain, s_cols: np.ndarray) -> torch.Tensor:
    """Ritz vectors Q^T s for the given eigenvector columns of T (rows of the result)."""
    blocks = chain._blocks(chain.steps)
    device = blocks[0].device
    coef = torch.from_numpy(np.ascontiguousarray(s_cols.T)).to(device=device)
    out = torch.zeros(coef.shape[0], chain.dim, dtype=torch.float64, device=device)
    step = max(1, _CHUNK_ELEMENTS // max(chain.dim, 1))
    start = 0
    for blk in blocks:
        for r0 in range(0, blk.shape[0], step):
            rows = blk[r0 : r0 + step]
            out += coef[:, start + r0 : start + r0 + rows.shape[0]] @ rows.to(torch.float64)
        start += blk.shape[0]
    return out.to(chain.store_dtype)


def _finish(
    chain: _Chain,
    k: int,
    which: str,
    tol: float,
    seed: int,
    converged: bool,
    info: dict[str, Any],
    return_vectors: bool,
    warn: bool = True,
    name: str = "",
) -> LanczosResult:
    theta, res = info["theta"], info["res"]
    want_top = which in ("both", "largest")
    want_bot = which in ("both", "smallest")
    top_idx = info["top_idx"] if want_top else np.array([], dtype=int)
    bot_idx = info["bot_idx"] if want_bot else np.array([], dtype=int)
    top_vecs = bot_vecs = None
    if return_vectors:
        top_vecs = _ritz_vectors(chain, info["s"][:, top_idx]) if want_top else None
        bot_vecs = _ritz_vectors(chain, info["s"][:, bot_idx]) if want_bot else None
    if warn and not converged:
        worst = float(np.max(res[np.concatenate([top_idx, bot_idx])])) if theta.size else float("nan")
        scale = float(np.max(np.abs(theta))) if theta.size else float("nan")
        where = f" for {name}" if name else ""
        warnings.warn(
            f"Lanczos{where} stopped after {chain.steps} steps without meeting tol={tol:g}: worst "
            f"relative Ritz residual {worst / scale if scale else float('nan'):.2e}; raise max_steps",
            ConvergenceWarning,
            stacklevel=3,
        )
    return LanczosResult(
        top=tuple(float(x) for x in theta[top_idx]),
        bottom=tuple(float(x) for x in theta[bot_idx]),
        top_residuals=tuple(float(x) for x in res[top_idx]),
        bottom_residuals=tuple(float(x) for x in res[bot_idx]),
        converged=converged,
        steps=chain.steps,
        num_matvecs=chain.steps,
        alphas=tuple(chain.alphas),
        betas=tuple(chain.betas),
        ritz_values=tuple(float(x) for x in theta),
        tol=tol,
        k=k,
        which=which,
        seed=seed,
        dim=chain.dim,
        exhausted=chain.exhausted,
        reorthogonalize=chain.policy,
        num_reorth=chain.num_reorth,
        top_vectors=top_vecs,
        bottom_vectors=bot_vecs,
    )


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
    start = random_unit_vector(dim, gen) if v0 is None else v0
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
    The start vector is Gaussian from ``seed`` unless ``v0`` is given. ``reorthogonalize``: ``"partial"``
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
) -> list[LanczosResult]:
    """``lanczos`` on every block of ``mop`` at once: one ``matvec_many`` per step advances all chains
    still running (finished ones pass ``None``). Block ``b`` starts from seed ``block_seed(seed, b)``,
    so its result equals ``lanczos(block_b, seed=block_seed(seed, b))`` exactly. ``indices[b]``
    replaces ``b`` in the seed (a subset of a larger block list then draws that list's vectors).
    ``reorthogonalize`` as in :func:`lanczos`.
    """
    _validate(k, which, max_steps, reorthogonalize)
    tol = default_tol(mop.dtype) if tol is None else float(tol)
    ids = _block_ids(indices, len(mop.dims))
    chains = [
        _new_chain(
            int(d),
            mop.dtype,
            mop.device,
            int(k),
            block_seed(seed, ids[b]),
            None,
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
    "LanczosResult",
    "basis_dtype",
    "block_seed",
    "default_max_steps",
    "default_tol",
    "lanczos",
    "lanczos_lockstep",
    "lanczos_tridiagonal",
    "random_unit_vector",
]
