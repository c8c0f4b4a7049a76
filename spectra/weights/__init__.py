"""Weight spectra: singular values of weight matrices and the metrics built on them.

Belongs here: fp64 singular values (exact and partial), ranks/norms/condition numbers, the power-law
fit, Marchenko-Pastur statistics, parameter roles, the weights probe that runs them over a checkpoint,
and update spectra between two checkpoints.
"""
