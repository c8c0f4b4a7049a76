"""``--weights FILE``: a checkpoint loaded into a factory's model through the same readers as ``spectra
weights`` (safetensors, torch with ``weights_only=True`` and nested/wrapped state dicts, GGUF dequantized).

Names are matched to the model's ``state_dict()`` keys as stored, or with a leading ``model.`` removed or
added when every name differs by it (a training wrapper the reader could not tell from a HF name). Any
missing or unexpected key, or a shape that differs, is refused in one line.
"""

from __future__ import annotations

from pathlib import Path

from hessian_spectra.analyses.workloads.common import short_list
from hessian_spectra.errors import InputError
from torch import nn

__all__ = ["load_weights"]


def _renamings(names: list[str], keys: set[str]) -> list[tuple[str, dict[str, str]]]:
    """Candidate file-name -> model-key maps: as stored, without or with a common ``model.`` prefix."""
    out = [("as stored", {n: n for n in names})]
    if names and all(n.startswith("model.") for n in names):
        out.append(("'model.' removed", {n: n[len("model.") :] for n in names}))
    if keys and all(k.startswith("model.") for k in keys):
        out.append(("'model.' added", {n: f"model.{n}" for n in names}))
    return out


def load_weights(model: nn.Module, path: str | Path) -> str:
    """Load a checkpoint file into ``model`` (strict: every key, every shape); returns how names matched."""
    from hessian_spectra.checkpoints.reader import open_checkpoint

    path = Path(path)
    if not path.exists():
        raise InputError(path, "weights file not found")
    keys = set(model.state_dict())
    with open_checkpoint(path) as ckpt:
        names = [n for n in ckpt.names() if ckpt.meta(n).skip is None]
        how, mapping = max(_renamings(names, keys), key=lambda c: len(set(c[1].values()) & keys))
        missing = keys - set(mapping.values())
        unexpected = [n for n, k in mapping.items() if k not in keys]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"{len(missing)} model tensors missing from the file ({short_list(missing)})")
            if unexpected:
                parts.append(
                    f"{len(unexpected)} file tensors the model does not have ({short_list(unexpected)})"
                )
            raise InputError(path, "weights do not match the model: " + "; ".join(parts))
        state = {mapping[n]: ckpt.load(n) for n in names}
    target = model.state_dict()
    wrong = [k for k, v in state.items() if tuple(v.shape) != tuple(target[k].shape)]
    if wrong:
        k = wrong[0]
        raise InputError(
            path, f"weights do not match the model: {len(wrong)} shapes differ, e.g. {k} is "
            f"{tuple(state[k].shape)} in the file and {tuple(target[k].shape)} in the model",
        )  # fmt: skip
    try:
        model.load_state_dict(state, strict=True)
    except Exception as err:
        raise InputError(path, f"cannot load the weights into the model ({type(err).__name__})") from None
    return how
