"""Advice from weight spectra: PC-layer preconditioning and spectral-clipping thresholds."""
