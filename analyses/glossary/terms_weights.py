"""Glossary entries of the weight spectra (every weights.csv column, the report's and terminal's tables).

Notation: W is N x M with N >= M, sigma its singular values in descending order, lambda = sigma^2 the
eigenvalues of W^T W (the ESD), p = lambda / sum(lambda).
"""

from __future__ import annotations

from hessian_spectra.analyses.glossary.core import t

WW = 'Martin & Mahoney, "Implicit Self-Regularization in Deep Neural Networks", JMLR 2021 (WeightWatcher 0.7.7 definitions)'
PL = 'Clauset, Shalizi & Newman, "Power-law distributions in empirical data", SIAM Review 2009; ' + WW
MP = "Marchenko & Pastur 1967; Johnstone, Annals of Statistics 2001 (Tracy-Widom margin)"
PC = "PC-layer polynomial weight preconditioning (reference code github.com/Empath-aln/PC-layer)"
W_UNITS = "units of the weights"

TERMS = (
    t("matrix", "matrix", "one weight matrix: a 2-D tensor, a fused QKV part, a conv kernel flattened to (out, in x kernel) or an expert slice",
      "-", "-", "-", "name"),
    t("kind", "kind", "how the matrix was read: linear, embedding, conv, qkv_fused (a part of a fused Q/K/V tensor) or expert",
      "-", "-", "-"),
    t("shape", "shape", "rows x columns as stored", "-", "-", "-"),
    t("rows", "rows", "number of rows as stored", "count", "-", "-"),
    t("cols", "cols", "number of columns as stored", "count", "-", "-"),
    t("status", "status", "ok (full spectrum), partial (top/bottom-k only: full-spectrum metrics left empty), zero (a matrix of zeros: norms and ranks 0, the rest undefined) or nonfinite (NaN/Inf entries: no metrics)",
      "-", "anything but ok means some columns are empty, never guessed", "-"),
    t("null_reasons", "null reasons", "for each metric left empty in a row, why (e.g. 'tail of 9 < 10 eigenvalues', 'undefined for a zero matrix', 'numerically singular')",
      "-", "an empty metric in an ok row always has its reason here", "-"),
    t("n_nonfinite", "NaN/Inf entries", "number of NaN or Inf entries in the matrix", "count", "> 0 = a broken checkpoint", "-"),
    t("spectrum", "spectrum", "full, partial or nonfinite: how much of the spectrum was computed", "-", "-", "-"),
    t("dtype", "dtype", "precision the singular values were computed in (float64 by default)", "-",
      "float32 loses small singular values (see README)", "-"),
    t("sigma_max", "sigma_max", "largest singular value = spectral norm ||W||_2", W_UNITS,
      "the largest gain of the layer; its growth over training is what spectral clipping and weight decay bound", "-"),
    t("sigma_min", "sigma_min", "smallest singular value", W_UNITS, "near 0 = a direction the layer nearly erases", "-"),
    t("frobenius_norm", "Frobenius norm", "sqrt(sum sigma^2)", W_UNITS, "-", "-"),
    t("nuclear_norm", "nuclear norm", "sum sigma", W_UNITS, "-", "-"),
    t("stable_rank", "stable rank", "sum lambda / lambda_max = ||W||_F^2 / ||W||_2^2",
      "dimensions (1..M)", "small = dominated by a few directions; an iid matrix has a large one", "Rudelson & Vershynin 2007; " + WW),
    t("participation_ratio", "participation ratio", "(sum lambda)^2 / sum lambda^2 (the Renyi-2 effective rank of p)",
      "dimensions (1..M)", "between stable rank and soft rank", "-"),
    t("soft_rank", "soft rank", "exp(-sum p ln p) (the Renyi-1 effective rank of p)", "dimensions (1..M)",
      "M = all directions equally used", "-"),
    t("renyi_ranks", "Renyi rank", "exp(ln(sum p^a) / (1 - a)) for the order a in the column name (a = 1 soft rank, 2 participation ratio, inf stable rank)",
      "dimensions (1..M)", "decreases with a", "Renyi 1961"),
    t("effective_rank", "effective rank", "exp(-sum q ln q) with q = sigma / sum sigma (Roy-Vetterli)", "dimensions (1..M)", "-",
      "Roy & Vetterli 2007"),
    t("numerical_rank", "numerical rank", "number of singular values above the tolerance (numerical_rank_tol)", "count",
      "below M = exactly rank-deficient in this precision", "numpy.linalg.matrix_rank convention"),
    t("numerical_rank_tol", "rank tolerance", "sigma_max x max(N, M) x machine epsilon of numerical_rank_dtype", W_UNITS, "-", "-"),
    t("numerical_rank_dtype", "rank dtype", "the precision whose epsilon sets the rank tolerance", "-", "-", "-"),
    t("condition_number", "kappa", "sigma_max / sigma_min", "x (dimensionless)",
      "large = ill-conditioned; dominated by the single smallest sigma, so mod. kappa is the robust version", "-"),
    t("modified_condition_number", "mod. kappa", "sigma_max / mean of the smallest 10% of the singular values",
      "x (dimensionless)", "compare with an iid matrix of the same shape (iid column); the PC layer targets matrices at >= 2x iid", PC),
    t("gmcn", "GMCN", "geometric mean of mod. kappa over the matrices considered", "x (dimensionless)",
      "compare with the iid GMCN of the same shapes", PC),
    t("spectral_entropy", "spectral entropy", "-sum p ln p / ln(numerical rank)", "0..1",
      "1 = flat spectrum (random-like); low = a few dominant directions", WW),
    t("alpha", "alpha", "exponent of the power law p(lambda) ~ lambda^-alpha fitted to the ESD tail by maximum likelihood, xmin chosen by the smallest KS distance",
      "dimensionless", "WeightWatcher reads 2-6 as well-trained, < 2 over-trained, > 6 under-trained; unreliable when n_tail is small (see sigma_alpha)", PL),
    t("xmin", "xmin", "start of the fitted power-law tail (an eigenvalue of W^T W)", W_UNITS + " squared", "-", PL),
    t("n_tail", "n_tail", "number of eigenvalues in the fitted tail (lambda >= xmin)", "count",
      "alpha is reported only for tails of at least 10 eigenvalues; fewer than 8: no power law is drawn", PL),
    t("sigma_alpha", "sigma_alpha", "(alpha - 1) / sqrt(n_tail), the standard error of the MLE alpha", "dimensionless",
      "alpha +- 2 sigma_alpha is the plausible range", PL),
    t("ks_distance", "KS distance", "Kolmogorov-Smirnov distance between the tail and the fitted power law", "0..1",
      "small = the power law describes the tail; above ~0.1 the fit is poor", PL),
    t("alpha_weighted", "alpha weighted", "alpha x log10(lambda_max)", "dimensionless", "WeightWatcher's quality metric; lower is better within a model family", WW),
    t("log_norm", "log norm", "log10(sum lambda) = log10(||W||_F^2)", "log10 units", "-", WW),
    t("log_spectral_norm", "log spectral norm", "log10(lambda_max) = log10(sigma_max^2)", "log10 units", "-", WW),
    t("log_alpha_norm", "log alpha norm", "log10(sum lambda^alpha) over all eigenvalues", "log10 units", "-", WW),
    t("mp_noise_sigma", "MP noise", "per-entry noise scale s of the Marchenko-Pastur fit, from the median singular value (the exact MP median of the aspect ratio)",
      W_UNITS, "-", MP),
    t("mp_bulk_edge", "MP edge", "s (sqrt N + sqrt M): the largest singular value an iid noise matrix of this shape would have", W_UNITS,
      "singular values above it (plus the Tracy-Widom margin) are spikes: learned structure", MP),
    t("mp_n_spikes", "MP spikes", "number of singular values above MP edge + the 99% Tracy-Widom margin s x 2.02 x (1/sqrt N + 1/sqrt M)^(1/3) / 2 (the one spike definition of weights, recommend and the report)",
      "count", "0 = indistinguishable from noise at 99%; a pure-noise matrix shows a spike 1% of the time", MP, "spikes"),
    t("warnings", "warnings", "why some metrics of the row are empty or unreliable", "-", "-", "-"),
    t("note", "note", "how the matrix was cut out of its tensor (fused QKV split, conv flattening, transposed Conv1D)", "-", "-", "-"),
)  # fmt: skip
