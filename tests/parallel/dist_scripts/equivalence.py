"""Run under torchrun (2 gloo ranks) by tests/test_distributed.py: every distributed path on a tiny model.

Usage: ``torchrun --nproc-per-node 2 equivalence.py OUT.json CHECKPOINT``. Rank 0 writes OUT.json with
the data-parallel Lanczos/SLQ/trace/block results, the block-parallel results, the weights report and
the messages each rank saw when rank 1 failed.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2]  # tests/: the shared test helpers (support/)
sys.path.insert(0, str(TESTS))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from hessian_spectra import parallel as D  # noqa: E402
from hessian_spectra.curvature.block_builders import parameter_blocks, row_blocks  # noqa: E402
from hessian_spectra.curvature.hessian import HessianOperator  # noqa: E402
from hessian_spectra.errors import SpectraError  # noqa: E402
from hessian_spectra.krylov.lanczos import lanczos  # noqa: E402
from hessian_spectra.krylov.slq import slq, slq_lockstep  # noqa: E402
from hessian_spectra.krylov.trace import hutchinson  # noqa: E402
from hessian_spectra.weights.plan import WeightsSettings  # noqa: E402
from support.models import mlp_case  # noqa: E402

SLQ = {"num_probes": 2, "steps": 10}


def blocks_of(op):
    """Whole-tensor blocks plus a row split of the first weight (11 blocks of mixed size)."""
    return parameter_blocks(op) + row_blocks(op, "0.weight", size=6)


def compute(info: D.DistInfo, checkpoint: str) -> dict:
    case = mlp_case()
    dop = D.data_parallel_hessian(case.model, case.batches, case.loss, device="cpu", dtype=torch.float64)
    out: dict = {"world_size": info.world_size, "batches_per_rank": list(dop.batches_per_rank)}
    out["loss"] = dop.loss_value
    out["gradient"] = dop.gradient().tolist()
    out["lanczos"] = lanczos(dop, k=2, seed=1).to_dict()
    out["slq"] = slq(dop, seed=2, **SLQ).to_dict()
    out["hutchinson"] = hutchinson(dop, num_probes=8, seed=3).to_dict()
    mop = dop.block_diagonal(blocks_of(dop))
    out["dp_block_slq"] = [r.to_dict() for r in slq_lockstep(mop, seed=4, **SLQ)]
    full = HessianOperator(case.model, case.batches, case.loss, dtype=torch.float64)
    res, plan = D.block_spectra(full, blocks_of(full), method="slq", seed=4, costs="estimate", **SLQ)
    out["bp_block_slq"] = [r.to_dict() for r in res]
    out["bp_plan"] = plan.to_dict()
    res, _ = D.block_spectra(full, blocks_of(full), method="lanczos", seed=5, k=2)
    out["bp_block_lanczos"] = [r.to_dict() for r in res]
    report = D.analyze_weights_distributed(checkpoint, WeightsSettings(seed=0))
    out["weights"] = report.to_dict()
    out["failure_messages"] = failure(info)
    out["after_failure"] = dop.matvec(torch.ones(dop.dim, dtype=torch.float64)).tolist()
    out["hang"] = hang(info)
    return out


def hang(info: D.DistInfo) -> list:
    """Rank 1 stops responding inside a group with a 3 s timeout: rank 0 must get a CollectiveError in
    about 3 s, not hang (then rank 1 times out the same way, and the default group reports both)."""
    if info.world_size == 1:
        return []
    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=3))
    if info.rank == 1:
        time.sleep(4)
    started = time.monotonic()
    try:
        D.check_all_ok(None, "hang test", group=group)
        message = "no error"
    except SpectraError as err:
        message = f"{type(err).__name__}: {err}"
    gathered: list = [None] * info.world_size
    dist.all_gather_object(gathered, (message, time.monotonic() - started))
    return gathered


def failure(info: D.DistInfo) -> list[str]:
    """Rank 1's loss raises mid-Lanczos: every rank must raise the same RankFailure naming rank 1
    (caught here, so the group stays usable; tests/dist_scripts/failing.py lets it end the job)."""
    case = mlp_case()
    calls = [0]

    def loss(model, batch):
        calls[0] += 1
        if info.rank == 1 and calls[0] > 3:
            raise RuntimeError("injected failure on rank 1")
        return case.loss(model, batch)

    op = D.data_parallel_hessian(case.model, case.batches, loss, dtype=torch.float64, mode="recompute")
    try:
        lanczos(op, k=1, seed=0)
        message = "no error"
    except SpectraError as err:
        message = f"{type(err).__name__}: {err}"
    if info.world_size == 1:
        return [message]
    gathered: list = [None] * info.world_size
    dist.all_gather_object(gathered, message)
    return gathered


def main() -> int:
    torch.set_num_threads(1)
    out_path, checkpoint = sys.argv[1], sys.argv[2]
    info = D.init_distributed("gloo", device="cpu", timeout_s=60)
    try:
        result = compute(info, checkpoint)
        if D.is_main_process():
            Path(out_path).write_text(json.dumps(result))
    finally:
        D.shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
