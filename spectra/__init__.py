"""hessian-spectra: curvature (Hessian) and weight spectra of PyTorch checkpoints.

The public API is re-exported here lazily (PEP 562), so ``import spectra`` costs nothing until a
name is used and the CLI starts fast. Typical use::

    from spectra import HessianOperator, cross_entropy, lanczos, slq, analyze_weights
"""

from __future__ import annotations

from spectra._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    # errors and I/O
    "SpectraError": "spectra.errors",
    "InputError": "spectra.errors",
    "ConvergenceWarning": "spectra.errors",
    # checkpoints and the weight-spectrum probe
    "open_checkpoint": "spectra.checkpoint",
    "Checkpoint": "spectra.checkpoint",
    "ExtractOptions": "spectra.matrices",
    "plan_tensor": "spectra.matrices",
    "extract_matrices": "spectra.matrices",
    "tensor_role": "spectra.roles",
    "singular_values": "spectra.svd",
    "partial_singular_values": "spectra.svd",
    "PartialSpectrum": "spectra.svd",
    "compute_metrics": "spectra.metrics",
    "MatrixMetrics": "spectra.metrics",
    "marchenko_pastur": "spectra.metrics",
    "summarize": "spectra.metrics",
    "fit_power_law": "spectra.powerlaw",
    "analyze_weights": "spectra.weights",
    "WeightsSettings": "spectra.weights",
    "WeightsReport": "spectra.weights",
    # curvature operators, blocks, guards, data helpers
    "LinearOperator": "spectra.linop",
    "MultiOperator": "spectra.linop",
    "DenseOperator": "spectra.linop",
    "HessianOperator": "spectra.operators",
    "GGNOperator": "spectra.operators",
    "Block": "spectra.blocks",
    "CompositeBlock": "spectra.blocks",
    "layer_blocks": "spectra.blocks",
    "BlockDiagonalOperator": "spectra.blocks",
    "parameter_blocks": "spectra.blocks",
    "row_blocks": "spectra.blocks",
    "column_blocks": "spectra.blocks",
    "head_blocks": "spectra.blocks",
    "qkv_blocks": "spectra.blocks",
    "eval_mode": "spectra.guards",
    "math_attention": "spectra.guards",
    "cross_entropy": "spectra.data",
    "mse": "spectra.data",
    "model_loss": "spectra.data",
    "causal_lm_loss": "spectra.data",
    # Krylov algorithms
    "lanczos": "spectra.krylov",
    "lanczos_lockstep": "spectra.krylov",
    "LanczosResult": "spectra.krylov",
    "slq": "spectra.quadrature",
    "slq_lockstep": "spectra.quadrature",
    "SLQResult": "spectra.quadrature",
    "SpectralDensity": "spectra.quadrature",
    "exact_density": "spectra.quadrature",
    "density_l1": "spectra.quadrature",
    "hutchinson": "spectra.trace",
    "hutchpp": "spectra.trace",
    "TraceEstimate": "spectra.trace",
    "power_iteration": "spectra.power",
    "PowerResult": "spectra.power",
    # the Hessian probe
    "run_hessian": "spectra.hessian_probe",
    "HessianSettings": "spectra.hessian_probe",
    "HessianReport": "spectra.hessian_probe",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
