"""Glossary entries of the Hessian, block heterogeneity and head-structure sections."""

from __future__ import annotations

from hessian_spectra.analyses.glossary.core import t

ZHANG = 'Zhang et al., "Why Transformers Need Adam: A Hessian Perspective", NeurIPS 2024'
SLQ = "Ubaru, Chen & Saad, SIAM J. Matrix Anal. Appl. 2017; Ghorbani, Krishnan & Xiao, ICML 2019"
LANCZOS = "Lanczos 1950; Paige 1972 and Parlett, The Symmetric Eigenvalue Problem (Ritz residuals)"
JS = "Lin, IEEE Trans. Inf. Theory 1991 (JS divergence); Endres & Schindelin 2003 (its square root is a metric)"
STRUCT = '"Towards Quantifying the Hessian Structure of Neural Networks" (2025); ' + ZHANG
CURV = "loss / parameter^2 (a second derivative of the loss)"

TERMS = (
    t("block", "block", "a diagonal sub-block of the Hessian: the second derivatives of the loss with respect to one group of parameters (a tensor, a head of Q/K/V, a layer, or an Adam-mini block, chosen by --blocks)",
      "-", "the unit whose spectrum is compared with the others", ZHANG),
    t("group", "group", "the kind of a block, from its parameter name with layer numbers removed (e.g. attn.q, mlp.fc_in, ln_1)",
      "-", "blocks of one group should behave alike across depth; the drivers table ranks groups", "-"),
    t("layer", "layer", "the first integer in the parameter name (the transformer layer or CNN stage); '-' for embeddings, final norm and head",
      "-", "depth position used by the figures", "-"),
    t("dim", "dim", "number of parameters in the block, i.e. the size of its Hessian block and of its spectrum",
      "parameters", "blocks under 16 parameters are too small for a density and stay out of the JS matrices", "-"),
    t("lambda_max", "lambda_max", "largest eigenvalue of the (full or block) Hessian, from Lanczos (full model) or the largest Ritz value of block SLQ",
      CURV, "the sharpest curvature direction; gradient descent is stable only for learning rate < 2 / lambda_max", LANCZOS),
    t("lambda_min", "lambda_min", "smallest eigenvalue of the (full or block) Hessian, same estimators as lambda_max",
      CURV, "negative = a direction of negative curvature: the point is not a minimum of this loss on this data; "
      "|lambda_min| << lambda_max is usual near a minimum", LANCZOS),
    t("trace", "trace", "sum of the eigenvalues = sum of the Hessian's diagonal, estimated by SLQ (dim x mean over probes of the quadrature sum)",
      "loss / parameter^2, summed over the block's parameters", "total curvature of the block; compare blocks by trace / dim (mean curvature)", SLQ + "; Hutchinson 1989"),
    t("trace_stderr", "trace stderr", "standard error of the SLQ trace over the random probes",
      "as trace", "small relative to |trace| = enough probes; raise --probes / --block-probes otherwise", SLQ),
    t("in_js", "in JS", "whether the block entered the pairwise JS matrices (blocks with fewer than 16 eigenvalues do not: a handful of eigenvalues is not a density)",
      "yes/no", "'no' blocks still count in the scale spread", "-"),
    t("flat", "flat", "the block's Hessian is zero up to rounding: its spectral radius is at most the HVP dtype's rounding (eps x the model's curvature scale; the heterogeneity analysis' flat list, with the likely reason); a report without that analysis uses max |eigenvalue| <= 1e-6 x the largest block lambda_max",
      "yes/no", "flat blocks have no curvature (e.g. a key bias under softmax, tokens absent from the data); they are drawn as markers, not densities", "-"),
    t("ritz_end", "end", "which end of the spectrum a Ritz value belongs to: top (largest eigenvalues) or bottom (smallest)",
      "-", "-", LANCZOS),
    t("ritz_value", "lambda", "a Ritz value: Lanczos's estimate of one eigenvalue of the Hessian", CURV,
      "converged when its residual is small", LANCZOS),
    t("ritz_residual", "residual", "|beta_m s_mi|, the Lanczos residual norm of a Ritz pair (how far it is from an exact eigenpair)",
      CURV, "below tol x |lambda_max| = converged; the report's `converged` flag says whether all requested pairs are", LANCZOS),
    t("converged", "converged", "every requested Ritz pair has a residual below the tolerance",
      "yes/no", "no = the extreme eigenvalues are estimates; raise --steps", LANCZOS),
    t("slq_density", "spectral density", "the eigenvalue density of the Hessian estimated by stochastic Lanczos quadrature: Gaussian-smoothed Ritz values weighted by the squared first components of the Ritz vectors, averaged over probes",
      "1 / eigenvalue unit", "mass far from zero = strongly curved directions; negative mass = saddle directions", SLQ),
    t("hvp", "HVPs", "Hessian-vector products: the unit of cost of every Hessian estimate (each costs about one forward and two backward passes)",
      "count", "the cost estimate is printed before the run", "Pearlmutter, Neural Computation 1994"),
    t("convention", "convention", "how block densities are built before the JS distance: the eigenvalue axis, whether block scales are kept (scales-kept) or each block is divided by its own spectral radius (shape-only), and the smoothing kernel",
      "-", "every JS number is tagged with its convention because the value depends on it", ZHANG),
    t("mean_js", "mean pairwise JS", "mean over all pairs of blocks of the Jensen-Shannon distance between their spectral densities",
      "0..1 (log base 2)", "0 = identical spectra; larger = more heterogeneous blocks (the paper's JS0 at initialisation); compare only within one convention", ZHANG + "; " + JS),
    t("js_distance", "JS distance", "sqrt of the Jensen-Shannon divergence (log base 2) between two blocks' spectral densities",
      "0..1", "0 = same density, 1 = disjoint supports", JS),
    t("spread_scale", "scale", "which block curvature scale the spread is taken over: lambda_max, mean curvature |trace| / dim, or |trace|",
      "-", "see ratio", ZHANG),
    t("spread_ratio", "ratio", "largest / smallest positive value of the scale over blocks",
      "x (dimensionless)", "near 1 = blocks equally curved; >= 1000x (3 decades) of lambda_max counts towards 'heterogeneous' in the default verdict", ZHANG),
    t("decades", "decades", "log10 of the spread ratio",
      "decades (powers of 10)", "3 or more decades of block lambda_max: curvature scales differ by 1000x or more", "-"),
    t("largest_block", "largest block", "the block holding the largest value of the scale", "-", "-", "-"),
    t("smallest_block", "smallest block", "the block holding the smallest positive value of the scale", "-",
      "a flat block here makes the spread meaningless: check the 'flat' column", "-"),
    t("driver_group", "group (drivers)", "a block group in the drivers table", "-", "groups at the top drive the heterogeneity most", "-"),
    t("num_blocks", "blocks", "number of blocks in the group", "count", "-", "-"),
    t("mean_js_within", "mean JS within", "mean JS distance over pairs of blocks inside the group",
      "0..1", "small = the group's blocks look alike", JS),
    t("mean_js_to_others", "mean JS to others", "mean JS distance over pairs with one block in the group and one outside",
      "0..1", "large = the group differs from the rest of the model", JS),
    t("contribution", "contribution", "the model's mean pairwise JS minus the mean pairwise JS with the group's blocks removed (leave-one-group-out)",
      "JS units (can be negative)", "positive = removing the group makes the model look more homogeneous: it drives the heterogeneity; negative = it is more alike than average", ZHANG),
    t("verdict", "verdict", "heterogeneous / homogeneous by the rule printed with it (the deciding quantities are cited with the verdict)",
      "-", "heterogeneous blocks are where SGD is expected to lag Adam", ZHANG),
    t("tensor", "tensor", "a parameter tensor (its name in the checkpoint)", "-", "-", "-", "tensor_name"),
    t("role", "role", "what a tensor does, from its name: q, k, v, qkv, attn_out, mlp_up/gate/down, embedding, lm_head, norm, bias, conv and others",
      "-", "decides which advice applies (PC layer: MLP and attention output only)", "-"),
    t("n_heads", "heads", "number of attention heads the tensor is cut into", "count", "-", "-"),
    t("head_share", "share", "share of the squared Frobenius mass of the tensor's Hessian block that lies inside per-head sub-blocks",
      "0..1", "1 = exactly block-diagonal by head; near the random share = no head structure (Q/K at init: ~1)", STRUCT),
    t("random_share", "random", "the same share for random partitions with the same block sizes (mean over draws)",
      "0..1", "the baseline the share is compared with", STRUCT),
    t("columns", "columns", "how the share was measured: exact (every Hessian column of the tensor) or sampled (whole heads sampled at random, with the number of columns)",
      "-", "sampled shares are estimates", "-"),
)  # fmt: skip
