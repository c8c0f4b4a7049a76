"""Run under torchrun by tests/test_distributed.py: rank 1 fails during a data-parallel Lanczos run.

Usage: ``torchrun --nproc-per-node 2 failing.py MODE`` with MODE ``raise`` (an exception in rank 1's
loss), ``exit`` (rank 1 dies abruptly) or ``hang`` (rank 1 stops responding; the 5 s process-group
timeout must end the job). Exits 2 with ``error: <message>`` on stderr, as the CLI does.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2]  # tests/: the shared test helpers (support/)
sys.path.insert(0, str(TESTS))

import torch  # noqa: E402
from hessian_spectra import parallel as D  # noqa: E402
from hessian_spectra.errors import SpectraError  # noqa: E402
from hessian_spectra.krylov.lanczos import lanczos  # noqa: E402
from support.models import mlp_case  # noqa: E402


def main() -> int:
    torch.set_num_threads(1)
    mode = sys.argv[1]
    info = D.init_distributed("gloo", device="cpu", timeout_s=5)
    case = mlp_case()
    calls = [0]

    def loss(model, batch):
        calls[0] += 1
        if info.rank == 1 and calls[0] > 3:
            if mode == "raise":
                raise RuntimeError("injected failure on rank 1")
            if mode == "exit":
                os._exit(3)
            if mode == "hang":
                time.sleep(600)
        return case.loss(model, batch)

    try:
        # recompute mode: the loss runs at every HVP, so the failure lands mid-Lanczos
        op = D.data_parallel_hessian(case.model, case.batches, loss, dtype=torch.float64, mode="recompute")
        lanczos(op, k=2, seed=0)
    except SpectraError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    finally:
        D.shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
