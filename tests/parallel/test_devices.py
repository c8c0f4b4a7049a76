"""Devices: `--device`/`--device-map` choice and errors, HF placement and dtype, the weights probe's device
path, model-parallel HVPs across two real devices (lazy-tensor device, no GPU needed), bf16 HVPs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hessian_spectra.curvature.hessian import HessianOperator
from hessian_spectra.errors import InputError
from support.cli import assert_clean_failure, run_cli
from support.models import mlp_case
from support.oracles import exact_hessian
from torch import nn

HERE = Path(__file__).resolve().parent
NO_CUDA = not torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------- choice
def test_device_strings_and_one_line_errors():
    from hessian_spectra.parallel.devices import DEVICE_CHOICES, parse_device, resolve_device

    assert resolve_device("cpu") == "cpu" and resolve_device(" CPU ") == "cpu"
    assert parse_device("cuda:3") == ("cuda", 3) and parse_device("auto") == ("auto", None)
    for bad in ("gpu", "cpu:0", "cuda:x", "", "mps", "auto:1"):
        with pytest.raises(InputError) as err:
            resolve_device(bad, "--device")
        assert str(err.value).startswith("--device: unknown device") and DEVICE_CHOICES in str(err.value)
    if NO_CUDA:
        assert resolve_device("auto") == "cpu"
        for spec in ("cuda", "cuda:0", "cuda:1"):
            with pytest.raises(InputError, match=r"^--dev: .*torch.cuda.is_available\(\) is False"):
                resolve_device(spec, "--dev")
    else:  # pragma: no cover - GPU machines
        assert resolve_device("auto").startswith("cuda:")
        with pytest.raises(InputError, match="does not exist"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_auto_is_decided_without_torch_when_no_driver(monkeypatch, tmp_path):
    """With torch not imported, `auto` must not import it on a machine without an NVIDIA driver."""
    from hessian_spectra.parallel import devices

    monkeypatch.delitem(sys.modules, "torch")  # restored by monkeypatch; nothing imports it meanwhile
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert devices.cuda_may_exist() is False
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(devices, "_DRIVER_FILES", (str(tmp_path / "no-driver"),))
    monkeypatch.setattr(devices, "_DEVICE_NODES", str(tmp_path / "nvidia[0-9]*"))
    assert devices.cuda_may_exist() is False and devices.resolve_device("auto") == "cpu"
    assert "torch" not in sys.modules
    (tmp_path / "nvidia0").touch()  # a device node: torch would be asked (by resolve_device)
    assert devices.cuda_may_exist() is True


@pytest.mark.parametrize("spec", ["cuda", "cuda:7", "tpu"])
def test_weights_cli_bad_device_is_one_line_exit_2(tmp_path, capsys, spec):
    if spec.startswith("cuda") and torch.cuda.device_count() > 7:  # pragma: no cover
        pytest.skip("this machine has that GPU")
    from support import ckpt_factory as cf

    path = cf.write_safetensors({"w": torch.randn(4, 4)}, tmp_path / "m.safetensors")
    out = tmp_path / "out"
    code, _, err = run_cli(["weights", str(path), "--out", str(out), "--quiet", "--device", spec], capsys)
    assert_clean_failure(code, err, "--device", out)


FACTORY = """
import torch
from torch import nn
from hessian_spectra.curvature.losses import cross_entropy

def make():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g))]
    return {"model": model, "loss": cross_entropy, "batches": batches}
"""


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--device", "cuda"], "--device"),
        (["--device", "npu"], "--device"),
        (["--device-map", "balanced"], "--device-map"),
        (["--device-map", "auto"], "--device-map"),  # a factory places its own model
        (["--device", "cpu", "--device-map", "auto"], "--device-map"),
    ],
)
def test_analyze_cli_bad_placement_is_one_line_exit_2(tmp_path, capsys, args, needle):
    if args == ["--device", "cuda"] and not NO_CUDA:  # pragma: no cover
        pytest.skip("CUDA is available here")
    factory = tmp_path / "factory.py"
    factory.write_text(FACTORY)
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["analyze", "--model-factory", f"{factory}:make", "--out", str(out), "-q", *args], capsys
    )
    assert_clean_failure(code, err, needle, out)


def test_analyze_records_where_the_model_ran(tmp_path, capsys):
    factory = tmp_path / "factory.py"
    factory.write_text(FACTORY)
    out = tmp_path / "out"
    argv = ["analyze", "--model-factory", f"{factory}:make", "--out", str(out), "-q", "--device", "cpu",
            "--no-weights", "--no-structure", "--probes", "2", "--steps", "5", "--block-probes", "2",
            "--block-steps", "5", "--top-k", "1"]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    doc = json.loads((out / "report.json").read_text())
    assert doc["placement"] == {
        "parameters_by_device": {"cpu": 51},
        "dtypes": ["float64"],
        "device_map": None,
    }


# ---------------------------------------------------------------------------------------------- weights probe
def test_weights_device_path_batches_by_shape_and_equals_the_cpu_report(tmp_path, monkeypatch):
    """The GPU code path (tensor -> device -> views -> batched svdvals per shape), driven on the CPU."""
    import hessian_spectra.weights.svd_batched as svd
    from hessian_spectra.checkpoints.examples import write_example_checkpoint
    from hessian_spectra.checkpoints.reader import open_checkpoint
    from hessian_spectra.weights.plan import WeightsSettings, plan_inventory
    from hessian_spectra.weights.probe import analyse_on_device, analyze_weights

    path = write_example_checkpoint(tmp_path / "ex")
    settings = WeightsSettings()
    ref = analyze_weights(path, settings)
    assert ref.provenance["backend"] == "numpy" and ref.provenance["device"] == "cpu"
    calls: list[tuple[bool | None, list[tuple[int, ...]]]] = []
    original = svd.scaled_singular_values_batched  # what the probe calls (values + power-of-two exponent)

    def spy(matrices, **kw):
        calls.append((kw.get("batch"), [tuple(m.shape) for m in matrices]))
        return original(matrices, **kw)

    monkeypatch.setattr(svd, "scaled_singular_values_batched", spy)
    with open_checkpoint(path) as ckpt:
        todo = [r for r in plan_inventory(ckpt, settings) if r.status == "analysed"]
        batched = analyse_on_device(ckpt, todo, settings, "cpu")
        one_each = analyse_on_device(ckpt, todo, settings, "cpu", max_batch_bytes=1)
    assert calls and all(b is True for b, _ in calls)
    shapes = calls[0][1]
    assert len(shapes) == len(ref.matrices) and len(set(shapes)) < len(shapes)  # same shapes batched together
    assert len(calls) == 1 + len(todo)  # then one flush per tensor with max_batch_bytes=1
    for got in (batched, one_each):
        assert [m.name for m in got] == [m.name for m in ref.matrices]
        for a, b in zip(got, ref.matrices, strict=True):
            assert (a.status, a.note, a.shape) == (b.status, b.note, b.shape)
            np.testing.assert_allclose(a.singular_values, b.singular_values, rtol=1e-10, atol=1e-13)
            for key, value in b.metrics.to_dict().items():
                if isinstance(value, float):
                    assert a.metrics.to_dict()[key] == pytest.approx(value, rel=1e-8, abs=1e-12), key


# ---------------------------------------------------------------------------------------------- operators
def test_single_device_vectors_are_views_and_results_stay_put():
    case = mlp_case("mse")
    op = HessianOperator(case.model, case.batches, case.loss, weighting=case.weights)
    assert not op.multi_device and op.device == op.input_device == torch.device("cpu")
    assert op.param_devices == [torch.device("cpu")] * len(op.param_names)
    v = torch.randn(op.dim)
    base = v.untyped_storage().data_ptr()
    for piece in op.split(v):  # no copies on one device
        assert piece.untyped_storage().data_ptr() == base
    H = exact_hessian(case.model, case.batches, case.loss, weights=case.weights)
    assert float((op.matvec(v).double() - H @ v.double()).abs().max()) < 1e-5 * float(H.abs().max())


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without CUDA")
def test_unusable_vector_device_and_meta_parameters_are_refused():
    case = mlp_case("mse")
    with pytest.raises(InputError, match="vector_device 'cuda' is not usable"):
        HessianOperator(case.model, case.batches, case.loss, vector_device="cuda")
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2, device="meta"))
    with pytest.raises(InputError, match="on the meta device .*'1.weight'"):
        HessianOperator(model, [(torch.randn(2, 3), torch.randn(2, 2))], lambda m, b: m(b[0]).sum())


def test_model_split_over_two_devices_matches_the_exact_hessian():
    """Model-parallel HVPs with real cross-device copies (tests/device_scripts/two_devices.py)."""
    script = HERE / "device_scripts" / "two_devices.py"
    res = subprocess.run([sys.executable, str(script)], cwd=HERE, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if "skip" in out:  # pragma: no cover - torch builds without torch._lazy
        pytest.skip(out["skip"])
    assert (
        out["param_devices"] == ["cpu", "lazy:0"] and out["multi_device"] and out["pieces_on_param_devices"]
    )
    assert out["vector_device"] == out["input_device"] == "cpu"
    for mode, tol in (("reuse", 1e-13), ("recompute", 1e-13), ("finite_difference", 1e-7)):
        r = out[mode]
        assert r["matvec"] <= tol and r["matmat"] <= tol, (mode, r)
        assert r["result_device"] == r["matmat_device"] == "cpu"
    assert out["gradient"] <= 1e-13 and out["parameters_vector"] == 0.0 and not out["batched_note"]
    lazy = out["vector_on_lazy"]
    assert lazy["matvec"] <= 1e-13 and lazy["device"] == "lazy:0" and lazy["multi"]
    assert out["ggn"]["matvec"] <= 1e-13 and out["ggn"]["gradient"] <= 1e-13
    assert out["lanczos"]["converged"] and max(out["lanczos"]["top"], out["lanczos"]["bottom"]) <= 1e-8
    assert out["block_diagonal"]["error"] is None and out["block_diagonal"]["max_rel"] <= 1e-13
    assert out["weights_unchanged"]


def test_bf16_hvps_with_float32_basis_against_the_exact_float64_hessian():
    """A bf16 model: HVPs in bf16, Lanczos scalars in float64 and its basis in float32.

    Reference: the float64 Hessian of the SAME function (bf16-rounded weights and inputs, exact in
    float64). Every bf16 operation rounds to eps = 2^-7 relative, so H v carries an error of a few
    eps x ||H|| ||v|| in the worst case; measured 0.08-0.12 eps on the MLP and SDPA cases. An extreme
    Ritz value is then within (its Ritz residual + ||E||) of the exact eigenvalue, ||E|| the HVP error:
    asserted with ||E|| <= 0.5 eps ||H|| (measured top/bottom errors 0.03-0.41 eps ||H||). Achievable:
    about 2-3 significant digits for lambda_max/lambda_min (0.5% of ||H||); inner Ritz values are worse.
    """
    from hessian_spectra.curvature.losses import cast_floating
    from hessian_spectra.krylov.chain import basis_dtype
    from hessian_spectra.krylov.lanczos import lanczos

    eps = float(torch.finfo(torch.bfloat16).eps)
    assert basis_dtype(torch.bfloat16) == torch.float32
    for loss in ("mse", "cross_entropy"):
        case = mlp_case(loss)
        model = case.model.to(torch.bfloat16)
        batches = [cast_floating(b, torch.bfloat16) for b in case.batches]
        H = exact_hessian(model, batches, case.loss, weights=case.weights)
        ev = torch.linalg.eigvalsh(H)
        norm = float(ev.abs().max())
        op = HessianOperator(model, batches, case.loss, weighting=case.weights)
        assert op.dtype == torch.bfloat16
        g = torch.Generator().manual_seed(0)
        for _ in range(3):
            v = torch.randn(op.dim, generator=g).to(torch.bfloat16)
            err = float((op.matvec(v).double() - H @ v.double()).norm()) / (norm * float(v.double().norm()))
            assert err <= 0.5 * eps, (loss, err / eps)
        r = lanczos(op, k=1, seed=0)
        assert r.converged and all(isinstance(a, float) for a in (*r.alphas, *r.betas))
        assert abs(r.top[0] - float(ev[-1])) <= r.top_residuals[0] + 0.5 * eps * norm, loss
        assert abs(r.bottom[0] - float(ev[0])) <= r.bottom_residuals[0] + 0.5 * eps * norm, loss


# ---------------------------------------------------------------------------------------------- HF loading
@pytest.fixture()
def gpt2_dir(tmp_path, capsys):
    from support.hf import tiny_gpt2_workload

    out = tiny_gpt2_workload(tmp_path)
    capsys.readouterr()
    return out


def test_hf_loads_in_the_config_dtype_unless_asked(gpt2_dir, tmp_path):
    from hessian_spectra.analyses.workloads import load_hf_workload
    from transformers import AutoModelForCausalLM

    folder, text = gpt2_dir
    bf16 = tmp_path / "bf16"
    shutil.copytree(folder, bf16)  # tokenizer files; the model files are overwritten in bf16
    AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(torch.bfloat16).save_pretrained(bf16)
    kw = {"batch_size": 4, "seq_len": 8, "max_batches": 1}
    work = load_hf_workload(bf16, text, **kw)
    assert {p.dtype for p in work.model.parameters()} == {torch.bfloat16}
    assert work.placement["dtypes"] == ["bfloat16"] and work.placement["parameters_by_device"].keys() == {
        "cpu"
    }
    work64 = load_hf_workload(bf16, text, dtype="float64", device="cpu", **kw)
    assert {p.dtype for p in work64.model.parameters()} == {torch.float64}
    op = HessianOperator(work64.model, work64.batches, dtype=torch.float64)
    assert not any("private copy" in n for n in op.notes)  # loaded in float64: no operator copy
    with pytest.raises(InputError, match="--dtype"):
        load_hf_workload(bf16, text, dtype="int8", **kw)


def test_device_map_auto_loads_resident_and_refuses_offload(gpt2_dir):
    pytest.importorskip("accelerate")
    from hessian_spectra.analyses.workloads import load_hf_workload

    folder, text = gpt2_dir
    kw = {"batch_size": 4, "seq_len": 8, "max_batches": 2}
    plain = load_hf_workload(folder, text, **kw)
    mapped = load_hf_workload(folder, text, device_map="auto", **kw)  # no GPU here: all on the CPU
    ops = [HessianOperator(w.model, w.batches) for w in (plain, mapped)]
    v = torch.randn(ops[0].dim, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ops[0].matvec(v), ops[1].matvec(v))
    with pytest.raises(InputError, match="--device-map: the model does not fit: .*offloads"):
        load_hf_workload(folder, text, device_map="auto", max_memory={"cpu": 1000}, **kw)


def test_from_pretrained_arguments_per_transformers_version(monkeypatch):
    """What load_hf_workload asks transformers for: dtype keyword by version, shard-wise loading onto
    the device (a device map of one entry) when accelerate is there, else a CPU load then ``.to``."""
    from types import SimpleNamespace

    from hessian_spectra.analyses.workloads import placement as data

    v5, v4 = SimpleNamespace(__version__="5.23.0"), SimpleNamespace(__version__="4.45.2")
    monkeypatch.setattr(data, "_has_accelerate", lambda: True)
    assert data._placement_kwargs(v5, device=None, device_map=None, dtype=None) == {"dtype": "auto"}
    assert data._placement_kwargs(v4, device="cuda:1", device_map=None, dtype="bfloat16") == {
        "torch_dtype": torch.bfloat16, "low_cpu_mem_usage": True, "device_map": {"": "cuda:1"},
    }  # fmt: skip
    assert data._placement_kwargs(v5, device="cpu", device_map="auto", dtype=None) == {
        "dtype": "auto", "device_map": "auto",
    }  # fmt: skip
    with pytest.raises(InputError, match="--device-map: unknown device map 'balanced'"):
        data._placement_kwargs(v5, device=None, device_map="balanced", dtype=None)
    monkeypatch.setattr(data, "_has_accelerate", lambda: False)
    assert data._placement_kwargs(v5, device="cuda:0", device_map=None, dtype="float32") == {
        "dtype": torch.float32
    }
    with pytest.raises(InputError, match="--device-map: needs the 'accelerate' package"):
        data._placement_kwargs(v5, device=None, device_map="auto", dtype=None)
