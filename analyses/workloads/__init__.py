"""Models and data from the command line: a HF model folder with ``--data`` (its own tokenizer or image
processor; text, pairs or image folders) or the ``--model-factory module:function`` protocol.

One module per job: ``factory`` (the factory protocol), ``weights_file`` (``--weights``), ``hf`` (a HF folder ->
workload) with ``hf_model`` (config, task, model loading and the config/weights mismatch check),
``text_batches``, ``embedding`` (sentence encoders: pooling and the contrastive loss), ``images`` (image
classification), ``data`` (reading ``--data``), ``check`` (the loss evaluated on every batch before any
Hessian work), ``placement`` (devices and dtypes for ``from_pretrained``), ``common`` (the Workload).
"""

from __future__ import annotations

from hessian_spectra.analyses.workloads.common import DEVICE_MAPS, Workload, model_placement, place_model
from hessian_spectra.analyses.workloads.data import read_pairs, read_records, read_texts
from hessian_spectra.analyses.workloads.factory import load_factory
from hessian_spectra.analyses.workloads.hf import load_hf_workload
from hessian_spectra.analyses.workloads.hf_model import TASKS, TOKENIZER_FILES, infer_task
from hessian_spectra.analyses.workloads.placement import LOAD_DTYPES
from hessian_spectra.analyses.workloads.weights_file import load_weights

__all__ = [
    "DEVICE_MAPS",
    "LOAD_DTYPES",
    "TASKS",
    "TOKENIZER_FILES",
    "Workload",
    "infer_task",
    "load_factory",
    "load_hf_workload",
    "load_weights",
    "model_placement",
    "place_model",
    "read_pairs",
    "read_records",
    "read_texts",
]
