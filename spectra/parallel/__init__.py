"""Devices and torch.distributed: where tensors live and how work is split over ranks.

Belongs here: ``--device`` resolution (:mod:`.devices`) and the ``torch.distributed`` scale-out, whose
public names this package re-exports lazily (``from hessian_spectra import parallel as D``, then
``D.init_distributed``, ``D.data_parallel_hessian``, ``D.block_spectra``, ...): the process group and
its failure-propagating collectives (:mod:`.process_group`), sharding and cost-balanced assignment
(:mod:`.sharding`), data-parallel HVPs (:mod:`.data_parallel`), block-parallel spectra
(:mod:`.block_parallel`) and the matrix-parallel weights probe (:mod:`.matrix_parallel`). Launch with
``torchrun``; without a process group everything runs as a single process (world size 1).
Design notes: spectra/docs/distributed.md.
"""

from __future__ import annotations

from hessian_spectra._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    # the process group, collectives and failures
    "DEFAULT_TIMEOUT_S": "hessian_spectra.parallel.process_group",
    "DistInfo": "hessian_spectra.parallel.process_group",
    "RankFailure": "hessian_spectra.parallel.process_group",
    "CollectiveError": "hessian_spectra.parallel.process_group",
    "resolve_device": "hessian_spectra.parallel.process_group",
    "init_distributed": "hessian_spectra.parallel.process_group",
    "shutdown_distributed": "hessian_spectra.parallel.process_group",
    "dist_info": "hessian_spectra.parallel.process_group",
    "is_main_process": "hessian_spectra.parallel.process_group",
    "check_all_ok": "hessian_spectra.parallel.process_group",
    # who owns what
    "shard_indices": "hessian_spectra.parallel.sharding",
    "shard_batches": "hessian_spectra.parallel.sharding",
    "BlockAssignment": "hessian_spectra.parallel.sharding",
    "assign_by_cost": "hessian_spectra.parallel.sharding",
    # data-parallel HVPs
    "DistributedOperator": "hessian_spectra.parallel.data_parallel",
    "DistributedMultiOperator": "hessian_spectra.parallel.data_parallel",
    "DistributedHessianOperator": "hessian_spectra.parallel.data_parallel",
    "data_parallel_hessian": "hessian_spectra.parallel.data_parallel",
    # block-parallel block spectra
    "estimate_block_costs": "hessian_spectra.parallel.block_parallel",
    "measure_block_costs": "hessian_spectra.parallel.block_parallel",
    "block_spectra": "hessian_spectra.parallel.block_parallel",
    # matrix-parallel weights probe
    "analyze_weights_distributed": "hessian_spectra.parallel.matrix_parallel",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
