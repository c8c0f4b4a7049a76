"""The ``--model-factory module:function`` protocol.

A factory is any importable callable taking no arguments and returning either a mapping with keys ``model``
(an ``nn.Module``), ``batches`` (a list of batches, see :mod:`hessian_spectra.curvature.losses`) and optionally
``loss`` (``loss(model, batch) -> mean loss``; default: the model output's ``.loss``), or the tuple
``(model, loss, batches)``. ``module`` may be a dotted module name or a path to a ``.py`` file.

Everything that can go wrong in user code (a syntax or import error, a factory or loss that raises or calls
``sys.exit``, batches that are not batches, a NaN loss) becomes one InputError naming the factory.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path

from hessian_spectra.analyses.workloads.check import _line, call_user, check_batches, check_loss
from hessian_spectra.analyses.workloads.common import Workload, model_placement, place_model
from hessian_spectra.errors import InputError, SpectraError
from torch import nn

__all__ = ["load_factory"]


def _import(module: str):
    """Import a dotted module or a ``.py`` file; any failure (including ``sys.exit``) is an InputError."""
    is_file = module.endswith(".py") or "/" in module
    where = module if is_file else "--model-factory"
    try:
        if is_file:
            path = Path(module)
            if not path.is_file():
                raise InputError(module, "model factory file not found")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None:
                raise InputError(module, "cannot import this file")
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            return mod
        return importlib.import_module(module)
    except SpectraError:
        raise
    except SyntaxError as err:
        raise InputError(
            where, f"cannot import the factory: SyntaxError: {err.msg} (line {err.lineno})"
        ) from None
    except SystemExit as err:
        raise InputError(where, f"importing the factory called sys.exit({err.code})") from None
    except ImportError as err:
        raise InputError(
            where, f"cannot import module {module!r} ({type(err).__name__}: {_line(err)})"
        ) from None
    except Exception as err:
        raise InputError(where, f"importing the factory raised {type(err).__name__}: {_line(err)}") from None
    finally:
        sys.stdout.flush()


def load_factory(
    spec: str, weights: str | Path | None = None, *, device: str | None = None, check: bool = True
) -> Workload:
    """Call the ``module:function`` factory and check what it returns (see the module docstring); then
    load ``weights`` into the model, move it to ``device`` and (``check``) evaluate the loss on every batch."""
    if ":" not in spec:
        raise InputError("--model-factory", f"expected module:function, got {spec!r}")
    module, _, name = spec.rpartition(":")
    fn = getattr(_import(module), name, None)
    if not callable(fn):
        raise InputError("--model-factory", f"{module} has no callable {name!r}")
    out = call_user(fn, where="--model-factory", what=spec)
    if isinstance(out, Mapping):
        model, loss, batches = out.get("model"), out.get("loss"), out.get("batches")
    elif isinstance(out, tuple | list) and len(out) == 3:
        model, loss, batches = out
    else:
        raise InputError(
            "--model-factory", "factory must return {'model', 'batches', 'loss'} or (model, loss, batches)"
        )
    if not isinstance(model, nn.Module):
        raise InputError("--model-factory", f"factory returned a {type(model).__name__}, not an nn.Module")
    if batches is None:
        raise InputError("--model-factory", "factory returned no batches")
    batches = check_batches(batches, "--model-factory")
    if weights is not None:
        from hessian_spectra.analyses.workloads.weights_file import load_weights

        load_weights(model, weights)
    if device is not None:
        place_model(model, device)
    if check:
        check_loss(model, loss, batches, "--model-factory")
    return Workload(model=model, loss=loss, batches=batches, source=spec, placement=model_placement(model),
                    inputs={"kind": "model-factory", "factory": spec, "weights": None if weights is None else str(weights),
                            "batches": len(batches)})  # fmt: skip
