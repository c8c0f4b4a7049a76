"""Optional engines that reproduce numbers from other libraries (each imports its library lazily)."""

from hessian_spectra.curvature.engines.pyhessian import (
    pyhessian_density,
    pyhessian_top_eigenvalues,
    pyhessian_trace,
)

__all__ = ["pyhessian_density", "pyhessian_top_eigenvalues", "pyhessian_trace"]
