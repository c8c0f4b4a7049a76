"""One Lanczos recurrence (``_Chain``): the Krylov basis, float64 alpha/beta, reorthogonalisation.

Belongs here: basis storage, blocked float64 reductions, full and partial (PRO, omega recurrence)
reorthogonalisation and breakdown/restart; nothing about when to stop or what to report. Float64
scalars whatever the operator dtype; the basis in the operator dtype, at least float32.
Design notes: spectra/docs/lanczos.md.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

# Basis rows per allocation (the basis grows by whole chunks, never by copying).
_ROWS_PER_CHUNK = 16
# Dot products and squared norms sum the elementwise products in blocks of this many entries in the
# basis dtype, the block sums in float64 (see _Chain._dot).
_SUM_BLOCK = 4096
# Reorthogonalise a second time when one pass shrank ||w|| below this fraction (Daniel-Gragg-Kaufman-Stewart).
_DGKS = 1.0 / math.sqrt(2.0)

Reorth = Literal["full", "partial"]
_POLICIES = ("full", "partial")


def basis_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the Krylov basis is stored in: the operator's, but at least float32."""
    return dtype if dtype in (torch.float64, torch.float32) else torch.float32


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

    def coefficients(self, z: torch.Tensor) -> tuple[np.ndarray, float]:
        """(Q^T z, (beta_m q_{m+1})^T z) in float64 for a finished chain that kept its basis: what the Krylov
        deflation of a trace needs (A Q = Q T + beta_m q_{m+1} e_m^T; the second term is 0 when the Krylov
        space is invariant). Blocked float64 sums as in the recurrence; no dim-sized float64 copy."""
        if self._ring or self._released:
            raise RuntimeError("coefficients need the basis of an unreleased chain (reorthogonalize=True)")
        x = z.detach().reshape(-1).to(device=self.device, dtype=self.store_dtype)
        n = self.steps
        vals = [self._dot(self._slot(i), x) for i in range(n)]
        tail = not self.exhausted and n < self.dim and n == self.max_steps
        if tail:  # the unnormalised next vector w = beta_m q_{m+1} sits in row n (see _push)
            vals.append(self._dot(self._slot(n), x))
        out = torch.stack(vals).tolist() if vals else []
        c = np.asarray(out[:n], dtype=np.float64)
        return c, float(out[n]) if tail else 0.0

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


__all__ = ["basis_dtype"]
