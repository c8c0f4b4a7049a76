"""Block heterogeneity of the Hessian: how different the spectra of the diagonal blocks are.

Input: one :class:`~hessian_spectra.analyses.heterogeneity.blocks.BlockSpectrum` per block (exact
eigenvalues, or SLQ nodes and weights). Output: a
:class:`~hessian_spectra.analyses.heterogeneity.verdict.HeterogeneityReport` with, for each named
:class:`~hessian_spectra.analyses.heterogeneity.conventions.JSConvention`, the pairwise Jensen-Shannon
distance matrix between the block spectral densities; the spread of block curvature scales (block
lambda_max and traces); a one-line verdict; and which block groups (Q/K, V, attention output, MLP,
embeddings, norms, ...) drive the heterogeneity. Modules: ``blocks`` (block spectra and their groups),
``conventions`` (how densities are built, by name), ``densities`` (kernel-smoothed densities on one
common grid), ``js`` (Jensen-Shannon distances), ``verdict`` (scale spread, drivers, the report).
Design notes: spectra/docs/heterogeneity.md.
"""
