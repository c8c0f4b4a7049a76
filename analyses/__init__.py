"""Findings and recommendations built on the probes in :mod:`spectra` (lazy re-exports, PEP 562)."""

from __future__ import annotations

from spectra._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    # block heterogeneity ("Why Transformers Need Adam")
    "BlockSpectrum": "analyses.heterogeneity",
    "JSConvention": "analyses.heterogeneity",
    "HeterogeneityReport": "analyses.heterogeneity",
    "analyze_heterogeneity": "analyses.heterogeneity",
    "spectra_from_hessian": "analyses.heterogeneity",
    "js_distance": "analyses.heterogeneity",
    "js_matrix": "analyses.heterogeneity",
    # Hessian structure and Adam-mini partitions
    "mass_share": "analyses.structure",
    "verify_partition": "analyses.structure",
    "VerifyReport": "analyses.structure",
    "Partition": "analyses.partition",
    "partition_model": "analyses.partition",
    "partition_checkpoint": "analyses.partition",
    "write_partition": "analyses.partition",
    "read_partition": "analyses.partition",
    "block_views": "analyses.partition",
    "adam_mini_config": "analyses.partition",
    "make_adam_mini": "analyses.partition",
    "adam_mini_blocks": "analyses.blockings",
    # PC layer and spectral clipping
    "apply_pc": "analyses.pc_layer",
    "predicted_singular_values": "analyses.pc_layer",
    "merge_pc": "analyses.pc_layer",
    "merge_pc_state_dict": "analyses.pc_layer",
    "convert_to_pc": "analyses.pc_layer",
    "hard_clip": "analyses.clipping",
    "soft_clip": "analyses.clipping",
    "soft_clip_exact": "analyses.clipping",
    "newton_schulz_steps": "analyses.clipping",
    "recommend": "analyses.recommendations",
    "Recommendations": "analyses.recommendations",
    "render_markdown": "analyses.recommendations",
    # models and data from the command line
    "load_factory": "analyses.data",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
