"""Block heterogeneity of the Hessian: how far apart the curvature of the diagonal blocks is.

Input: one :class:`~hessian_spectra.analyses.heterogeneity.blocks.BlockSpectrum` per block (every
eigenvalue of a block done exactly, or SLQ nodes and weights per probe). Output: a
:class:`~hessian_spectra.analyses.heterogeneity.verdict.HeterogeneityReport`: flat blocks (zero up to
rounding) with their likely reasons, set aside; the verdict's scale statistic (``sharpness-gap``) with a
bootstrap uncertainty and every other named statistic; a one-line verdict citing what decided it; the
block groups (Q/K, V, attention output, MLP, embeddings, norms, ...) that move the statistic most; and, as
context, the pairwise Jensen-Shannon distances between block densities under named conventions.
Modules: ``blocks`` (block spectra and their groups), ``flat`` (flat blocks), ``scales`` (statistics,
bootstrap), ``drivers`` (leave-one-group-out), ``conventions``/``densities``/``js`` (JS distances),
``verdict`` (the report). Design notes: spectra/docs/heterogeneity.md.
"""
