"""Data flows one way: checkpoint -> spectra -> analyses -> figures/report -> cli.

Within ``hessian_spectra``: the probes (spectra/ and its sub-packages) never import analyses, figures or
cli; analyses and figures never import cli; krylov never imports curvature (it is written against
``linop``); nothing imports the old top-level names (``spectra``, ``analyses``, ``figures``, ``cli``).
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = "hessian_spectra"
UPSTREAM = {f"{PKG}.analyses", f"{PKG}.figures", f"{PKG}.cli"}
FORBIDDEN = {
    "spectra": UPSTREAM,
    "spectra/checkpoints": UPSTREAM | {f"{PKG}.curvature", f"{PKG}.krylov"},
    "spectra/krylov": UPSTREAM | {f"{PKG}.curvature", f"{PKG}.checkpoints", f"{PKG}.weights"},
    "spectra/weights": UPSTREAM | {f"{PKG}.curvature", f"{PKG}.krylov"},
    "analyses": {f"{PKG}.cli"},
    "figures": {f"{PKG}.cli", f"{PKG}.analyses"},
}
OLD_NAMES = {"spectra", "analyses", "figures", "cli"}


def _imports(path: Path) -> set[str]:
    """Absolute module names imported by ``path`` (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _python_files(folder: str):
    for path in (ROOT / folder).rglob("*.py"):
        if folder == "spectra" and path == ROOT / "spectra" / "__init__.py":
            continue  # the public facade resolves hs.analyses/hs.figures/hs.cli lazily, on attribute access
        yield path


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_no_upstream_imports(folder):
    bad = {}
    for path in _python_files(folder):
        hits = {m for m in _imports(path) for f in FORBIDDEN[folder] if m == f or m.startswith(f + ".")}
        if hits:
            bad[str(path.relative_to(ROOT))] = sorted(hits)
    assert not bad


@pytest.mark.parametrize("folder", ["spectra", "analyses", "figures", "cli", "tests", "bench"])
def test_nothing_imports_the_old_top_level_names(folder):
    bad = {
        str(path.relative_to(ROOT)): sorted(m for m in _imports(path) if m.split(".")[0] in OLD_NAMES)
        for path in (ROOT / folder).rglob("*.py")
    }
    assert not {k: v for k, v in bad.items() if v}


def test_every_package_folder_is_declared_in_pyproject():
    """A sub-package left out of ``[tool.setuptools] packages`` would be missing from the wheel."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = {v: k for k, v in config["package-dir"].items()}
    found = set()
    for top, name in mapping.items():
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top)
            found.add(".".join([name, *rel.parts]))
    assert found == set(config["packages"])
