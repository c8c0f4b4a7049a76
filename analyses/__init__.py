"""Findings and recommendations built on the probes in :mod:`spectra` (lazy re-exports, PEP 562)."""

from __future__ import annotations

from hessian_spectra._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    # block heterogeneity ("Why Transformers Need Adam")
    "BlockSpectrum": "hessian_spectra.analyses.heterogeneity.blocks",
    "JSConvention": "hessian_spectra.analyses.heterogeneity.conventions",
    "HeterogeneityReport": "hessian_spectra.analyses.heterogeneity.verdict",
    "analyze_heterogeneity": "hessian_spectra.analyses.heterogeneity.verdict",
    "spectra_from_hessian": "hessian_spectra.analyses.heterogeneity.blocks",
    "js_distance": "hessian_spectra.analyses.heterogeneity.js",
    "js_matrix": "hessian_spectra.analyses.heterogeneity.js",
    "find_flat": "hessian_spectra.analyses.heterogeneity.flat",
    "ScaleStatistic": "hessian_spectra.analyses.heterogeneity.scales",
    "STATISTICS": "hessian_spectra.analyses.heterogeneity.scales",
    # Hessian structure and Adam-mini partitions
    "mass_share": "hessian_spectra.analyses.structure",
    "verify_partition": "hessian_spectra.analyses.structure",
    "VerifyReport": "hessian_spectra.analyses.structure",
    "Partition": "hessian_spectra.analyses.partitions.partition",
    "partition_model": "hessian_spectra.analyses.partitions.build",
    "partition_checkpoint": "hessian_spectra.analyses.partitions.build",
    "write_partition": "hessian_spectra.analyses.partitions.partition",
    "read_partition": "hessian_spectra.analyses.partitions.partition",
    "block_views": "hessian_spectra.analyses.partitions.views",
    "adam_mini_config": "hessian_spectra.analyses.partitions.adam_mini",
    "make_adam_mini": "hessian_spectra.analyses.partitions.adam_mini",
    "adam_mini_blocks": "hessian_spectra.analyses.partitions.blockings",
    # PC layer and spectral clipping
    "apply_pc": "hessian_spectra.analyses.advice.pc_layer",
    "predicted_singular_values": "hessian_spectra.analyses.advice.pc_layer",
    "merge_pc": "hessian_spectra.analyses.advice.pc_merge",
    "merge_pc_state_dict": "hessian_spectra.analyses.advice.pc_merge",
    "convert_to_pc": "hessian_spectra.analyses.advice.pc_merge",
    "hard_clip": "hessian_spectra.analyses.advice.clipping",
    "soft_clip": "hessian_spectra.analyses.advice.clipping",
    "soft_clip_exact": "hessian_spectra.analyses.advice.clipping",
    "newton_schulz_steps": "hessian_spectra.analyses.advice.clipping",
    "recommend": "hessian_spectra.analyses.advice.recommendations",
    "Recommendations": "hessian_spectra.analyses.advice.recommendations",
    "render_markdown": "hessian_spectra.analyses.advice.markdown",
    "clip_from_updates": "hessian_spectra.analyses.advice.clip_series",
    # spectra over training
    "track_series": "hessian_spectra.analyses.track.run",
    "TrackSettings": "hessian_spectra.analyses.track.run",
    # models and data from the command line
    "load_factory": "hessian_spectra.analyses.workloads",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
