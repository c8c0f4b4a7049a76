"""hessian-spectra: curvature (Hessian) and weight spectra of PyTorch checkpoints.

The public API is re-exported here lazily (PEP 562), so ``import hessian_spectra`` costs nothing until
a name is used and the CLI starts fast. Typical use::

    import hessian_spectra as hs
    hs.lanczos(hs.HessianOperator(model, batches, hs.cross_entropy), k=5)
    hs.analyses.partition_model(model)

Sub-packages, in the order data flows: ``checkpoints`` (reading), ``weights`` (weight spectra),
``curvature`` (Hessian operators and the Hessian probe), ``krylov`` (algorithms), ``parallel``
(devices, torch.distributed), then ``analyses`` (findings), ``figures`` and ``cli``.
"""

from __future__ import annotations

from hessian_spectra._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    # errors and I/O
    "SpectraError": "hessian_spectra.errors",
    "InputError": "hessian_spectra.errors",
    "OutputError": "hessian_spectra.errors",
    "ConvergenceWarning": "hessian_spectra.errors",
    # checkpoints and the weight-spectrum probe
    "open_checkpoint": "hessian_spectra.checkpoints.reader",
    "Checkpoint": "hessian_spectra.checkpoints.reader",
    "ExtractOptions": "hessian_spectra.checkpoints.matrices",
    "plan_tensor": "hessian_spectra.checkpoints.matrices",
    "extract_matrices": "hessian_spectra.checkpoints.matrices",
    "tensor_role": "hessian_spectra.weights.roles",
    "singular_values": "hessian_spectra.weights.svd",
    "partial_singular_values": "hessian_spectra.weights.svd_partial",
    "PartialSpectrum": "hessian_spectra.weights.svd_partial",
    "compute_metrics": "hessian_spectra.weights.metrics",
    "MatrixMetrics": "hessian_spectra.weights.metrics",
    "marchenko_pastur": "hessian_spectra.weights.marchenko",
    "summarize": "hessian_spectra.weights.summary",
    "fit_power_law": "hessian_spectra.weights.powerlaw",
    "analyze_weights": "hessian_spectra.weights.probe",
    "WeightsSettings": "hessian_spectra.weights.plan",
    "WeightsReport": "hessian_spectra.weights.results",
    "discover_series": "hessian_spectra.checkpoints.series",
    "update_spectra": "hessian_spectra.weights.updates",
    # curvature operators, blocks, guards, data helpers
    "LinearOperator": "hessian_spectra.krylov.linop",
    "MultiOperator": "hessian_spectra.krylov.linop",
    "DenseOperator": "hessian_spectra.krylov.linop",
    "HessianOperator": "hessian_spectra.curvature.hessian",
    "GGNOperator": "hessian_spectra.curvature.ggn",
    "Block": "hessian_spectra.curvature.blocks",
    "CompositeBlock": "hessian_spectra.curvature.blocks",
    "layer_blocks": "hessian_spectra.curvature.block_builders",
    "BlockDiagonalOperator": "hessian_spectra.curvature.block_operators",
    "parameter_blocks": "hessian_spectra.curvature.block_builders",
    "row_blocks": "hessian_spectra.curvature.block_builders",
    "column_blocks": "hessian_spectra.curvature.block_builders",
    "head_blocks": "hessian_spectra.curvature.block_builders",
    "qkv_blocks": "hessian_spectra.curvature.block_builders",
    "eval_mode": "hessian_spectra.curvature.guards",
    "math_attention": "hessian_spectra.curvature.guards",
    "cross_entropy": "hessian_spectra.curvature.losses",
    "mse": "hessian_spectra.curvature.losses",
    "model_loss": "hessian_spectra.curvature.losses",
    "causal_lm_loss": "hessian_spectra.curvature.losses",
    # Krylov algorithms
    "lanczos": "hessian_spectra.krylov.lanczos",
    "lanczos_lockstep": "hessian_spectra.krylov.lanczos",
    "start_vector": "hessian_spectra.krylov.lanczos",
    "LanczosResult": "hessian_spectra.krylov.result",
    "slq": "hessian_spectra.krylov.slq",
    "slq_lockstep": "hessian_spectra.krylov.slq",
    "SLQResult": "hessian_spectra.krylov.slq",
    "SpectralDensity": "hessian_spectra.krylov.density",
    "exact_density": "hessian_spectra.krylov.density",
    "density_l1": "hessian_spectra.krylov.density",
    "ExactSpectrum": "hessian_spectra.krylov.exact",
    "dense_spectrum": "hessian_spectra.krylov.exact",
    "hutchinson": "hessian_spectra.krylov.trace",
    "hutchpp": "hessian_spectra.krylov.trace",
    "trace_estimate": "hessian_spectra.krylov.trace",
    "TraceEstimate": "hessian_spectra.krylov.trace",
    "Interval": "hessian_spectra.krylov.intervals",
    "power_iteration": "hessian_spectra.krylov.power",
    "PowerResult": "hessian_spectra.krylov.power",
    # the Hessian probe
    "run_hessian": "hessian_spectra.curvature.probe",
    "HessianSettings": "hessian_spectra.curvature.probe",
    "HessianReport": "hessian_spectra.curvature.probe",
    "Plan": "hessian_spectra.curvature.plan",
    "parse_duration": "hessian_spectra.curvature.budget",
    "parse_bytes": "hessian_spectra.curvature.budget",
    # sharpness inside a training loop
    "SharpnessTracker": "hessian_spectra.curvature.tracking",
    "SharpnessRecord": "hessian_spectra.curvature.tracking",
    "SharpnessCallback": "hessian_spectra.curvature.trainer_callback",
    "stability_reference": "hessian_spectra.curvature.stability",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"

SUBPACKAGES = ("checkpoints", "weights", "curvature", "krylov", "parallel", "analyses", "figures", "cli")

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, SUBPACKAGES)
