"""Optional engines that reproduce numbers from other libraries (each imports its library lazily)."""

from spectra.engines.pyhessian_engine import pyhessian_density, pyhessian_top_eigenvalues, pyhessian_trace

__all__ = ["pyhessian_density", "pyhessian_top_eigenvalues", "pyhessian_trace"]
