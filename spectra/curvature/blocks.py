"""Named views into parameter tensors (whole tensor, rows, columns, heads, Q/K/V parts) and blocks made of
several such parts (:class:`CompositeBlock`, e.g. all tensors of a layer): the block vocabulary the
constructors and block operators share, plain data with no autograd.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from hessian_spectra.errors import InputError

__all__ = ["Block", "CompositeBlock", "AnyBlock"]

#: ``get(param_name)`` returns that parameter's region of some flat or parameter-shaped tensor.
ParamGetter = Callable[[str], torch.Tensor]


@dataclass(frozen=True)
class Block:
    """A named slice ``[start, stop)`` along ``axis`` of parameter ``param`` (``axis=None``: whole tensor).

    ``view`` (optional) is a shape with the parameter's element count through which the tensor is seen
    before slicing: ``(numel,)`` for one block per coordinate, ``(prod(shape[:-1]), shape[-1])`` for rows
    of a 3-D tensor (Adam-mini's "last" layout). ``axis``/``start``/``stop`` then refer to that view.
    """

    name: str
    param: str
    shape: tuple[int, ...]
    axis: int | None = None
    start: int = 0
    stop: int | None = None
    kind: str = "tensor"
    view: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.view is not None:
            view = tuple(int(s) for s in self.view)
            if math.prod(view) != math.prod(self.shape):
                raise InputError(
                    None, f"block {self.name!r}: view {view} does not hold the {math.prod(self.shape)} "
                    f"elements of shape {self.shape}",
                )  # fmt: skip
            object.__setattr__(self, "view", None if view == self.shape else view)
        if self.axis is None:
            return
        seen = self.seen_shape
        if not 0 <= self.axis < len(seen):
            raise InputError(None, f"block {self.name!r}: axis {self.axis} out of range for shape {seen}")
        stop = seen[self.axis] if self.stop is None else self.stop
        if not 0 <= self.start < stop <= seen[self.axis]:
            raise InputError(
                None,
                f"block {self.name!r}: [{self.start}, {stop}) is not inside axis {self.axis} "
                f"of length {seen[self.axis]}",
            )
        object.__setattr__(self, "stop", stop)

    @property
    def seen_shape(self) -> tuple[int, ...]:
        """The shape the slice is taken from: ``view`` when set, else the parameter's shape."""
        return self.shape if self.view is None else self.view

    @property
    def block_shape(self) -> tuple[int, ...]:
        """Shape of the selected sub-tensor."""
        if self.axis is None:
            return self.seen_shape
        s = list(self.seen_shape)
        s[self.axis] = int(self.stop) - self.start  # type: ignore[arg-type]
        return tuple(s)

    @property
    def numel(self) -> int:
        """Number of parameters in the block (the block operator's dimension)."""
        return math.prod(self.block_shape)

    @property
    def param_numel(self) -> int:
        return math.prod(self.shape)

    @property
    def parts(self) -> tuple[Block, ...]:
        """The slices the block is made of: itself (see :class:`CompositeBlock` for several)."""
        return (self,)

    @property
    def params(self) -> tuple[str, ...]:
        """Names of the parameters the block touches."""
        return (self.param,)

    def index(self, x: torch.Tensor) -> torch.Tensor:
        """The block's view of a parameter-shaped tensor (differentiable; no copy)."""
        seen = self.seen_shape
        if x.shape != seen:
            try:
                x = x.view(seen)
            except RuntimeError:  # a non-contiguous gradient: read a copy (put targets are contiguous)
                x = x.reshape(seen)
        if self.axis is None:
            return x
        return x.narrow(self.axis, self.start, int(self.stop) - self.start)  # type: ignore[arg-type]

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """Flat block vector from a parameter-shaped (or flat, parameter-sized) tensor."""
        if x.numel() != self.param_numel:
            raise ValueError(f"block {self.name!r}: expected {self.param_numel} values, got {x.numel()}")
        return self.index(x.reshape(self.shape)).reshape(-1)

    def put(self, v: torch.Tensor, into: torch.Tensor | None = None) -> torch.Tensor:
        """Parameter-shaped tensor holding flat ``v`` in the block region (zeros elsewhere unless ``into``)."""
        if v.numel() != self.numel:
            raise ValueError(f"block {self.name!r}: expected {self.numel} values, got {v.numel()}")
        out = torch.zeros(self.shape, dtype=v.dtype, device=v.device) if into is None else into
        self.index(out).copy_(v.reshape(self.block_shape))
        return out

    def gather(self, get: ParamGetter) -> torch.Tensor:
        """Flat block vector, reading the parameter's region through ``get`` (how operators index)."""
        return self.take(get(self.param))

    def scatter(self, v: torch.Tensor, get: ParamGetter) -> None:
        """Write flat ``v`` into the block region of ``get(param)`` (a writable parameter-sized view)."""
        self.put(v, into=get(self.param).view(self.shape))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["view"] = None if self.view is None else list(self.view)
        d["numel"] = self.numel
        return d


@dataclass(frozen=True)
class CompositeBlock:
    """A block made of several parts (whole tensors and/or slices, of one or several parameters).

    Its vector is the parts' flat vectors concatenated in order; the block operator applies the
    principal sub-matrix of the Hessian on all the parts' coordinates (cross terms between parts
    included) with one pruned backward. Parts must not overlap: slices of one parameter must share
    axis and view and have disjoint ranges; a whole-tensor part must be the parameter's only part.
    """

    name: str
    parts: tuple[Block, ...]
    kind: str = "group"

    def __post_init__(self) -> None:
        parts = tuple(self.parts)
        object.__setattr__(self, "parts", parts)
        if not parts:
            raise InputError(None, f"block {self.name!r}: no parts")
        by_param: dict[str, list[Block]] = {}
        for p in parts:
            if not isinstance(p, Block):
                raise InputError(None, f"block {self.name!r}: parts must be Blocks, got {type(p).__name__}")
            by_param.setdefault(p.param, []).append(p)
        for param, ps in by_param.items():
            if len(ps) == 1:
                continue
            if any(p.axis is None for p in ps) or len({(p.axis, p.view, p.shape) for p in ps}) > 1:
                raise InputError(
                    None, f"block {self.name!r}: parts of {param!r} overlap or slice it along different axes"
                )
            spans = sorted((p.start, int(p.stop)) for p in ps)  # type: ignore[arg-type]
            if any(a1 < b0 for (_, b0), (a1, _) in zip(spans, spans[1:], strict=False)):
                raise InputError(None, f"block {self.name!r}: parts of {param!r} overlap")

    @property
    def numel(self) -> int:
        """Number of parameters in the block (the block operator's dimension)."""
        return sum(p.numel for p in self.parts)

    @property
    def params(self) -> tuple[str, ...]:
        """Names of the parameters the block touches, in first-appearance order."""
        return tuple(dict.fromkeys(p.param for p in self.parts))

    @property
    def bounds(self) -> list[tuple[int, int]]:
        """``[a, b)`` of each part inside the block vector."""
        out, a = [], 0
        for p in self.parts:
            out.append((a, a + p.numel))
            a += p.numel
        return out

    def split(self, v: torch.Tensor) -> list[torch.Tensor]:
        """The parts' pieces (views) of a flat block vector."""
        if v.numel() != self.numel:
            raise ValueError(f"block {self.name!r}: expected {self.numel} values, got {v.numel()}")
        flat = v.reshape(-1)
        return [flat[a:b] for a, b in self.bounds]

    def gather(self, get: ParamGetter) -> torch.Tensor:
        """Flat block vector: each part read from ``get(part.param)``, concatenated."""
        return torch.cat([p.take(get(p.param)) for p in self.parts])

    def scatter(self, v: torch.Tensor, get: ParamGetter) -> None:
        """Write flat ``v`` part by part into ``get(part.param)`` (writable parameter-sized views)."""
        for p, piece in zip(self.parts, self.split(v), strict=True):
            p.put(piece, into=get(p.param).view(p.shape))

    def take(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Flat block vector from a mapping parameter name -> parameter-shaped (or flat) tensor."""
        return self.gather(lambda n: tensors[n])

    def put(self, v: torch.Tensor, into: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Parameter name -> parameter-shaped tensor holding ``v`` on the block (zeros elsewhere unless ``into``)."""
        out = dict(into) if into is not None else {}
        for p in self.parts:
            if p.param not in out:
                out[p.param] = torch.zeros(p.shape, dtype=v.dtype, device=v.device)
        self.scatter(v, lambda n: out[n])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "numel": self.numel, "params": list(self.params),
            "parts": [p.to_dict() for p in self.parts],
        }  # fmt: skip


#: Either kind of block; both have ``name``, ``kind``, ``numel``, ``parts``, ``params``, ``gather``/``scatter``.
AnyBlock = Block | CompositeBlock
