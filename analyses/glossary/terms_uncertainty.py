"""Glossary entries of exact block spectra, intervals (issue 18) and the heterogeneity statistic (issue 11)."""

from __future__ import annotations

from hessian_spectra.analyses.glossary.core import t

ZHANG = 'Zhang et al., "Why Transformers Need Adam: A Hessian Perspective", NeurIPS 2024'
MEYER = "Meyer, Musco, Musco & Woodruff, Hutch++ (SOSA 2021); Ubaru, Chen & Saad 2017 (SLQ)"
EFRON = "Efron & Tibshirani, An Introduction to the Bootstrap, 1993"

TERMS = (
    t("block_method", "method", "how the block's spectrum was obtained: exact (every eigenvalue of the dense block from its "
      "columns, used when the block has at most probes x steps parameters, so it costs no more than its SLQ) or slq "
      "(block stochastic Lanczos quadrature)", "-", "exact rows have zero-width intervals", "-", "method"),
    t("trace_ci", "trace CI", "the block's trace with its confidence interval over the random probes (Student t; "
      "Krylov-deflated SLQ when the first probe's basis is kept); '(exact)' when the spectrum is known exactly",
      "as trace", "an interval that straddles 0 does not tell the sign of the block's total curvature", MEYER,
      "trace_interval"),
    t("negative_mass", "mass < 0", "fraction of the block's smoothed spectral density (the one plotted) below zero, "
      "with its interval over probes", "fraction (0-1)", "mass well above 0 = directions of negative curvature in the "
      "block; the smoothing puts a little mass below 0 even for a positive semi-definite block", "-"),
    t("statistic", "statistic", "a scale statistic of the blocks' curvature: how many decades the blocks' lambda_max "
      "spans under the named summary (the verdict uses one, marked '(verdict)')", "-", "see its definition column", ZHANG),
    t("statistic_value", "value (decades)", "the statistic's value: log10 of a ratio of block curvature scales",
      "decades (1 = 10x)", "compare with its threshold", "-"),
    t("threshold", "threshold", "the value from which the verdict reads heterogeneous (calibrated on the validation "
      "suite of bench/bench_heterogeneity.py: transformers above, CNNs and MLPs below)", "decades", "-", ZHANG),
    t("definition", "definition", "what the statistic summarises, in words", "-", "-", "-"),
    t("flat_block", "flat block", "a block whose Hessian is zero up to rounding, left out of every spread and density "
      "comparison", "-", "see its likely reason", "-"),
    t("relative_radius", "radius / model scale", "the block's spectral radius (max |eigenvalue|) divided by the "
      "model's curvature scale", "ratio", "below the flat tolerance = zero up to the rounding of the HVP dtype", "-"),
    t("flat_reason", "likely reason", "why the block's curvature is zero (a key bias under softmax, embedding rows of "
      "tokens absent from the data, a head the loss does not use, ...)", "-", "-", "-"),
    t("parameter_share", "parameter share", "the group's share of the non-flat parameters", "fraction (0-1)",
      "the statistic weighs blocks by parameters, so large groups move it most", "-"),
    t("median_decades_below_max", "median decades below sharpest", "median over the group's blocks of how many decades "
      "their lambda_max lies below the sharpest block's", "decades", "-", "-"),
    t("statistic_without", "statistic without", "the verdict's statistic recomputed with the group's blocks left out",
      "decades", "far below the model's value = this group makes the model read heterogeneous", "-"),
    t("effect", "effect", "the model's statistic minus the statistic without the group (leave-one-group-out)",
      "decades", "groups are ranked by it: the top ones drive the verdict", EFRON),
)  # fmt: skip
