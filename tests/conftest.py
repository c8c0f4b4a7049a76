"""Shared test settings: deterministic threads, float64 helpers."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_configure(config):
    """One torch thread: the tiny models here are overhead-bound, and it keeps runs reproducible."""
    import torch

    torch.set_num_threads(1)
