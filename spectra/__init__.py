"""hessian-spectra: curvature and weight spectra of PyTorch checkpoints."""
