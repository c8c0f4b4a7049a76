"""The public API resolves, and importing the packages does no work (no torch import, no logging changes)."""

import subprocess
import sys

import spectra


def test_every_exported_name_resolves():
    for name in spectra.__all__:
        assert getattr(spectra, name) is not None, name


def test_analyses_exports_resolve():
    import analyses

    for name in analyses.__all__:
        assert getattr(analyses, name) is not None, name


def test_import_has_no_side_effects():
    code = (
        "import logging, sys, warnings; before = (logging.getLogger().level, list(warnings.filters));"
        "import spectra, analyses, figures, cli.main;"
        "assert 'torch' not in sys.modules, 'torch imported at import time';"
        "assert 'matplotlib' not in sys.modules;"
        "assert (logging.getLogger().level, list(warnings.filters)) == before"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
