"""Devices and torch.distributed: where tensors live and how work is split over ranks.

Belongs here: ``--device`` resolution, data-parallel HVPs, block-parallel spectra and the
matrix-parallel weights probe.
"""
