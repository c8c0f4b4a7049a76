"""Run by tests/test_devices.py in a subprocess: curvature operators on a model split over two devices.

No GPU is needed: the second device is PyTorch's lazy-tensor device (``torch._lazy`` with its TorchScript
backend, in every CPU build). It has real storage, a real double backward, and the same device checks as
CUDA: an op that mixes a ``cpu`` and a ``lazy`` tensor raises, and autograd refuses a gradient on the
wrong device. So a piece of a vector that is not moved to its parameter's device fails here as it would
across GPUs. ``torch.func`` crashes on lazy tensors (segfault), hence no forward-over-reverse mode and
the subprocess (a crash becomes a test failure, not the end of the test session).

The model is the float64 tiny MLP of tests/models.py with its first layers on ``cpu`` and the rest on
``lazy``; its forward moves activations between devices as accelerate's hooks do for a HF
``device_map``. Prints one JSON object with measured errors, or ``{"skip": reason}``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2]  # tests/: the shared test helpers (support/)
sys.path.insert(0, str(TESTS))

import torch  # noqa: E402
from torch import nn  # noqa: E402

torch.set_num_threads(1)


class SplitSequential(nn.Module):
    """``nn.Sequential`` whose modules sit on the given devices; the input of each is moved to it."""

    def __init__(self, seq: nn.Sequential, devices: list[str]):
        super().__init__()
        self.seq = seq
        self.devices = [torch.device(d) for d in devices]
        for module, dev in zip(seq, self.devices, strict=True):
            module.to(dev)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module, dev in zip(self.seq, self.devices, strict=True):
            x = module(x.to(dev))
        return x


def weights_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (both brought to the CPU)."""
    a, b = a.detach().cpu(), b.detach().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def main() -> dict:
    try:
        import torch._lazy
        import torch._lazy.ts_backend

        torch._lazy.ts_backend.init()
        torch.ones(1, device="lazy").cpu()
    except Exception as exc:  # a build without the lazy-tensor backend
        return {"skip": f"no lazy-tensor device in this torch build ({type(exc).__name__}: {exc})"}

    from hessian_spectra.curvature.ggn import GGNOperator, output_and_target
    from hessian_spectra.curvature.hessian import HessianOperator
    from hessian_spectra.curvature.losses import (
        cross_entropy as split_loss,  # targets follow the logits to the last device
    )
    from hessian_spectra.krylov.lanczos import lanczos
    from support.models import mlp_case
    from support.oracles import exact_ggn, exact_hessian

    case = mlp_case("cross_entropy")
    base = case.model.double()
    H = exact_hessian(base, case.batches, case.loss, weights=case.weights)
    model = SplitSequential(copy.deepcopy(base), ["cpu", "cpu", "lazy", "lazy", "lazy"])
    before = weights_hash(model)
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(H.shape[0], generator=gen, dtype=torch.float64)
    V = torch.randn(H.shape[0], 3, generator=gen, dtype=torch.float64)
    out: dict = {}

    ref = HessianOperator(base, case.batches, case.loss, weighting=case.weights)
    for mode in ("reuse", "recompute", "finite_difference"):
        op = HessianOperator(model, case.batches, split_loss, weighting=case.weights, mode=mode)
        hv, HV = op.matvec(v), op.matmat(V)
        out[mode] = {
            "matvec": rel(hv, H @ v),
            "matmat": rel(HV, H @ V),
            "result_device": str(hv.device),
            "matmat_device": str(HV.device),
        }
    op = HessianOperator(model, case.batches, split_loss, weighting=case.weights)
    out["param_devices"] = sorted({str(d) for d in op.param_devices})
    out["vector_device"] = str(op.device)
    out["input_device"] = str(op.input_device)
    out["multi_device"] = op.multi_device
    out["pieces_on_param_devices"] = all(
        piece.device == dev for piece, dev in zip(op.split(v), op.param_devices, strict=True)
    )
    out["gradient"] = rel(op.gradient(), ref.gradient())
    out["parameters_vector"] = rel(op.parameters_vector(), ref.parameters_vector())
    out["batched_note"] = [n for n in op.notes if "batched" in n]

    lazy_vec = HessianOperator(model, case.batches, split_loss, weighting=case.weights, vector_device="lazy")
    hv = lazy_vec.matvec(v.to("lazy"))
    out["vector_on_lazy"] = {
        "matvec": rel(hv, H @ v),
        "device": str(hv.device),
        "multi": lazy_vec.multi_device,
    }

    def fwd(m: nn.Module, b) -> tuple[torch.Tensor, torch.Tensor]:
        return output_and_target(m, b, loss="cross_entropy", shift=False)

    ggn = GGNOperator(model, case.batches, "cross_entropy", weighting=case.weights)
    G = exact_ggn(base, case.batches, fwd, ggn.output_loss, weights=case.weights)
    out["ggn"] = {"matvec": rel(ggn.matvec(v), G @ v), "gradient": rel(ggn.gradient(), ref.gradient())}

    ev = torch.linalg.eigvalsh(H)
    lz = lanczos(op, k=2, seed=0)
    scale = float(ev.abs().max())
    out["lanczos"] = {
        "converged": lz.converged,
        "top": max(abs(a - float(b)) for a, b in zip(lz.top, ev.flip(0)[:2], strict=True)) / scale,
        "bottom": max(abs(a - float(b)) for a, b in zip(lz.bottom, ev[:2], strict=True)) / scale,
    }
    try:
        bd = op.block_diagonal()
        vs = [torch.randn(d, generator=gen, dtype=torch.float64) for d in bd.dims]
        res = bd.matvec_many(vs)
        errs, a = [], 0
        for d, vb, hb in zip(bd.dims, vs, res, strict=True):
            errs.append(rel(hb, H[a : a + d, a : a + d] @ vb))
            a += d
        out["block_diagonal"] = {"error": None, "max_rel": max(errs)}
    except Exception as exc:  # reported, asserted by the test
        out["block_diagonal"] = {"error": f"{type(exc).__name__}: {exc}"[:300], "max_rel": None}
    out["weights_unchanged"] = weights_hash(model) == before
    return out


if __name__ == "__main__":
    print(json.dumps(main()))
