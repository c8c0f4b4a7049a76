"""The built wheel installs exactly one import package, ``hessian_spectra``, and lives beside PyPI's ``spectra``.

The wheel is built from a copy of the source folders (nothing is written into the checkout), installed
into a fresh virtual environment with ``--no-deps``; the environment sees the test environment's
packages (torch, the PyPI ``spectra`` colour library, ...) through a ``.pth`` line placed after its own
site-packages, so what it imports as ``hessian_spectra`` can only come from the wheel.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "spectra", "analyses", "figures", "cli")


def _site_packages(env: Path) -> Path:
    found = list(env.glob("lib/python*/site-packages")) + list(env.glob("Lib/site-packages"))
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of the fresh venv, its site-packages, the entries the wheel added there)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    dist = tmp / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)], check=True
    )
    (wheel,) = dist.glob("hessian_spectra-*.whl")
    env = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    site = _site_packages(env)
    before = set(p.name for p in site.iterdir())
    python = env / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", str(wheel)], check=True)
    added = set(p.name for p in site.iterdir()) - before
    # the test environment's packages, after the wheel's own site-packages
    paths = [sysconfig.get_paths()["purelib"], *(p for p in sys.path if p.endswith("site-packages"))]
    (site / "zz_test_env.pth").write_text("\n".join(dict.fromkeys(paths)) + "\n")
    return python, site, added


def test_exactly_one_import_package_lands_in_site_packages(installed):
    _, _, added = installed
    dist_info = {n for n in added if n.endswith(".dist-info")}
    assert len(dist_info) == 1 and next(iter(dist_info)).startswith("hessian_spectra-")
    assert added - dist_info == {"hessian_spectra"}


def test_console_script_is_installed(installed):
    python, _, _ = installed
    script = python.parent / ("spectra.exe" if sys.platform == "win32" else "spectra")
    assert script.exists()
    assert "hessian_spectra.cli.main" in script.read_text(errors="replace")


def test_wheel_imports_beside_the_pypi_spectra_colour_library(installed):
    """``import spectra`` stays PyPI's colour library; the whole API is reachable from the wheel."""
    pytest.importorskip("spectra", reason="the PyPI colour library 'spectra' (test extra)")
    python, site, _ = installed
    code = (
        "import spectra, hessian_spectra as hs, hessian_spectra.cli.main;"
        "assert hasattr(spectra, 'Color') and hasattr(spectra, 'Scale'), spectra.__file__;"
        f"assert hs.__file__.startswith({str(site)!r}), hs.__file__;"
        "assert callable(hs.lanczos) and callable(hs.analyses.partition_model);"
        "from hessian_spectra.analyses.report.document import SCHEMA_PATH; assert SCHEMA_PATH.is_file()"
    )
    # cwd outside the checkout: `python -c` puts the cwd first on sys.path, and the checkout's spectra/
    # folder (the source of hessian_spectra) would shadow the colour library there
    subprocess.run([str(python), "-c", code], check=True, cwd=site.parent)
