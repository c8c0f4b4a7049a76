"""Spectra over training (``spectra track``): a checkpoint series through the weights probe, the update
spectra between consecutive checkpoints, the clip thresholds they imply and, optionally, the Hessian
probe per checkpoint; the series summary, track.json/track.csv and track.html."""
