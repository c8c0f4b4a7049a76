"""Glossary entries of the advice: PC layer, spectral clipping, priorities, the Adam-mini partition and
the findings' confidence."""

from __future__ import annotations

from hessian_spectra.analyses.glossary.core import t

PC = "PC-layer polynomial weight preconditioning (reference code github.com/Empath-aln/PC-layer)"
SPECTRA = "SPECTRA spectral clipping of updates (reference code github.com/mlolab/llm-spectral-clipping)"
ADAM_MINI = 'Zhang et al., "Adam-mini: Use Fewer Learning Rates To Gain More", ICLR 2025'

TERMS = (
    t("iid_modified_condition_number", "iid mod. kappa", "mod. kappa of an iid Gaussian matrix of the same shape (Marchenko-Pastur quantiles)",
      "x (dimensionless)", "the baseline: a freshly initialised matrix has about this value", PC, "iid"),
    t("modcond_ratio", "mod. kappa / iid", "mod. kappa divided by the iid value of the same shape", "x (dimensionless)",
      ">= 2 = more ill-conditioned than random initialisation: the PC layer is recommended", PC),
    t("pc_level", "level", "degree k of the PC polynomial p_k (1-4) recommended; the paper uses 4 with AdamW and 2 with Muon",
      "-", "'-' = no PC layer for this matrix", PC),
    t("predicted_modcond", "predicted mod. kappa", "mod. kappa of the spectrum after the PC layer at the level, p_k applied to sigma / sigma_max",
      "x (dimensionless)", "what the PC layer would bring the matrix to; compare with iid", PC),
    t("safety_margin", "PI margin", "safe ratio of the level / worst sigma_max under-estimate of 10 cold power iterations (32 seeded starts)",
      "x (dimensionless)", "< 1 = the power-iteration estimate of sigma_max can be too low for the polynomial to stay safe: warm-start it", PC),
    t("apply", "apply", "whether the PC layer is recommended for the matrix", "yes/no", "see reason", PC),
    t("reason", "reason", "the rule that decided the row, with the numbers it compared", "-", "-", "-"),
    t("clip_group", "clip group", "layer group sharing one clip threshold: attention, mlp, embedding, head or other",
      "-", "-", SPECTRA),
    t("clip_c", "c", "spectral clip threshold: singular values of each update are capped (hard) or squashed s / sqrt(1 + s^2/c^2) (soft) at c",
      "update units (an Adam-normalised update has unit-size entries)", "paper: 5 at 160M, 10 at 0.78-1.5B parameters, flat for 5-50; 1 hurts", SPECTRA),
    t("clip_source", "source", "where c comes from: the paper's lookup by model size, or measured update spectra when available",
      "-", "a lookup is a default, not a measurement of this model", SPECTRA),
    t("n_matrices", "matrices", "number of matrices in the group", "count", "-", "-"),
    t("group_max_sigma", "max sigma_max", "largest sigma_max over the group's matrices", "units of the weights", "-", "-"),
    t("weight_bound", "weight bound", "steady-state spectral-norm bound of post-clipped training with decoupled weight decay lambda: c / lambda x sqrt(max(1, rows/cols))",
      "units of the weights", "inf without weight decay; below today's sigma_max = clipping would pull the weights down", SPECTRA),
    t("ns_steps", "NS steps (typ/worst)", "coupled Newton-Schulz steps the soft clip needs for 1e-5 accuracy: ceil(ln(1 + (sigma/c)^2) / ln 2.25) + 4, for a typical Adam-like update (sqrt(rows) + sqrt(cols)) and the worst one (sqrt(rows x cols))",
      "steps", "each step is two matrix products of the smaller Gram side", SPECTRA),
    t("soft_hard_gap", "soft-hard gap", "relative Frobenius distance between the soft and the hard clip on an iid unit-entry update of the shape",
      "% of the hard-clipped update", "small = the cheap soft clip is a good stand-in for the hard clip", SPECTRA),
    t("rank", "rank", "position in the priority list", "-", "1 = look at it first", "-"),
    t("priority_score", "score", "min of the matrix's percentile ranks in block lambda_max and in mod. kappa / iid (ties by their product)",
      "0..1", "near 1 = both high curvature and ill-conditioned", "-"),
    t("block_rule", "rule", "how the partition cuts a tensor into blocks that share one learning rate (per head, per output neuron, per token, whole, per coordinate)",
      "-", "-", ADAM_MINI),
    t("n_tensors", "tensors", "number of parameter tensors under the rule", "count", "-", "-"),
    t("n_params", "parameters", "number of trainable parameters (buffers such as position_ids are not counted)", "count", "-", "-"),
    t("learning_rates", "learning rates", "number of blocks = second-moment values Adam-mini keeps (AdamW keeps one per parameter)",
      "count", "fewer = less optimizer memory; Llama-2-7B: 1.16M (0.017% of parameters)", ADAM_MINI),
    t("learning_rate_share", "learning-rate share", "learning rates / parameters", "fraction", "-", ADAM_MINI),
    t("optimizer_state", "optimizer state", "fp32 bytes of optimizer state: AdamW keeps 2 values per parameter, Adam-mini 1 per parameter + 1 per block",
      "GiB", "the saving is the memory freed for activations or a larger batch", ADAM_MINI),
    t("file", "file", "an input file, relative to its folder", "-", "-", "-"),
    t("size_bytes", "bytes", "file size", "bytes", "-", "-"),
    t("sha256", "sha256", "SHA-256 of the file's bytes (hashed in 1 MiB chunks while the analysis runs)", "hex digest",
      "equal digests = the same file", "FIPS 180-4"),
    t("confidence", "confidence", "how far to trust a finding: high (exact or far from any threshold), medium (clear margin, but the link to training outcome is empirical), low (near a threshold, unconverged estimates, or a default rather than a measurement); the reason is printed with it",
      "high / medium / low", "act on high, test medium, treat low as a hint", "-"),
)  # fmt: skip
