"""The public API resolves, and importing the packages does no work (no torch import, no logging changes)."""

import subprocess
import sys

import hessian_spectra as spectra


def test_every_exported_name_resolves():
    for name in spectra.__all__:
        assert getattr(spectra, name) is not None, name


def test_analyses_exports_resolve():
    import hessian_spectra.analyses as analyses

    for name in analyses.__all__:
        assert getattr(analyses, name) is not None, name


def test_import_has_no_side_effects():
    code = (
        "import logging, sys, warnings; before = (logging.getLogger().level, list(warnings.filters));"
        "import hessian_spectra, hessian_spectra.analyses, hessian_spectra.figures, hessian_spectra.cli.main;"
        "assert 'torch' not in sys.modules, 'torch imported at import time';"
        "assert 'matplotlib' not in sys.modules;"
        "assert (logging.getLogger().level, list(warnings.filters)) == before"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_exported_functions_are_not_shadowed_by_submodules():
    """No submodule is named like an exported function (importing it would replace the function)."""
    import importlib

    for module in set(spectra._EXPORTS.values()):
        importlib.import_module(module)
    for name in spectra.__all__:
        value = getattr(spectra, name)
        assert not isinstance(value, type(spectra)), f"spectra.{name} is a module, not the exported object"


def test_analyses_exports_are_not_shadowed_by_submodules():
    import importlib

    import hessian_spectra.analyses as analyses

    for module in set(analyses._EXPORTS.values()):
        importlib.import_module(module)
    for name in analyses.__all__:
        assert not isinstance(getattr(analyses, name), type(analyses)), f"analyses.{name} is a module"


def test_one_name_reaches_the_whole_api():
    """``import hessian_spectra as hs`` reaches every sub-package by attribute, lazily."""
    code = (
        "import sys, hessian_spectra as hs;"
        "assert 'hessian_spectra.analyses' not in sys.modules;"
        "assert callable(hs.lanczos) and callable(hs.analyses.partition_model);"
        "assert hs.figures.__name__ == 'hessian_spectra.figures' and hs.cli.__name__ == 'hessian_spectra.cli';"
        "assert {'analyses', 'krylov', 'curvature', 'checkpoints', 'weights', 'parallel'} <= set(dir(hs))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_parallel_facade_resolves_lazily_and_is_not_shadowed():
    """``from hessian_spectra import parallel as D`` (the README's torchrun example) reaches the
    torch.distributed API by attribute, without importing torch first; no submodule hides a name."""
    import importlib

    import hessian_spectra.parallel as parallel

    code = "import sys; import hessian_spectra.parallel; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    for module in set(parallel._EXPORTS.values()):
        importlib.import_module(module)
    for name in parallel.__all__:
        value = getattr(parallel, name)
        assert value is not None and not isinstance(value, type(parallel)), f"parallel.{name} is a module"
