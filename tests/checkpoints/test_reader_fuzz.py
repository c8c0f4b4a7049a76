"""Property-based fuzzing of the safetensors, index and .pt readers (#14): for every generated file the reader
returns a valid checkpoint or raises the tool's own InputError, never anything else; memory stays bounded; no
file outside the checkpoint's folder is ever opened (an audit hook watches every ``open``, and a sentinel
checkpoint outside the folder must never show up in a result).

About 2,100 cases in the default run (derandomized, so CI sees the same cases every time).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from hessian_spectra.checkpoints.reader import open_checkpoint
from hessian_spectra.errors import InputError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_ROOT = Path(tempfile.mkdtemp(prefix="spectra-fuzz-"))
_CASE = _ROOT / "case"
_SENTINEL = _ROOT / "outside.safetensors"
_OPENED_OUTSIDE: list[str] = []
_ARMED = False
OUTCOMES = {"valid": 0, "input_error": 0}  # how the cases ended (the success path must be exercised too)


def _audit(event: str, args: tuple) -> None:
    if _ARMED and event == "open" and args and isinstance(args[0], str | bytes | os.PathLike):
        path = os.path.abspath(os.fsdecode(args[0]))
        # what a hostile index points at (the sentinel beside the case folder, its parent), never what the
        # interpreter itself opens (lazy imports, /proc)
        if "outside" in path or (path.startswith(str(_ROOT)) and not path.startswith(str(_CASE))):
            _OPENED_OUTSIDE.append(path)


sys.addaudithook(_audit)  # cannot be removed; inert unless _ARMED


def _fresh_case() -> Path:
    shutil.rmtree(_CASE, ignore_errors=True)
    _CASE.mkdir(parents=True)
    if not _SENTINEL.exists():
        from safetensors.torch import save_file

        save_file({"SENTINEL": torch.full((3, 3), 7.0)}, str(_SENTINEL))
    return _CASE


def _rss_mb() -> float:
    """Current resident memory of this process (not the peak, which earlier tests may have set)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _exercise(path: Path) -> None:
    """Open ``path`` and read every readable tensor; InputError is the only allowed failure. Memory: every
    tensor read is backed by the file (at most 4 bytes out per stored byte, plus slack) and resident memory,
    sampled while each tensor is alive, stays within 256 MiB of where the case started."""
    global _ARMED
    _OPENED_OUTSIDE.clear()
    budget = 4 * path.stat().st_size + 4096
    rss0 = _rss_mb()
    _ARMED = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open_checkpoint(path) as ckpt:
                names = ckpt.names()
                assert "SENTINEL" not in names
                for name in names:
                    meta = ckpt.meta(name)
                    try:
                        arr = ckpt.load_numpy(name)
                    except InputError:
                        continue
                    assert meta.skip is None and tuple(arr.shape) == tuple(meta.shape)
                    assert arr.nbytes <= budget, (name, arr.nbytes, budget)
                    assert _rss_mb() - rss0 < 256, (name, _rss_mb() - rss0)
        OUTCOMES["valid"] += 1
    except InputError as err:
        assert "\n" not in str(err)
        OUTCOMES["input_error"] += 1
    finally:
        _ARMED = False
    assert not _OPENED_OUTSIDE, _OPENED_OUTSIDE


FUZZ = settings(max_examples=700, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))  # fmt: skip

_names = st.one_of(
    st.sampled_from(["w", "a.weight", "../x", "module.fc.weight", "", "__metadata__"]), st.text(max_size=12)
)
_number = st.one_of(
    st.integers(-4, 70), st.integers(2**31, 2**80), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.none(), st.text(max_size=3),
)  # fmt: skip
_dtype = st.sampled_from(
    ["F32", "F16", "BF16", "F64", "I64", "I8", "U8", "BOOL", "F8_E4M3", "C64", "F4", "Q", ""]
)


@st.composite
def _safetensors_bytes(draw) -> bytes:
    """Valid files from random small tensors, then one of: nothing, a byte flip, a truncation, a wrong
    header length; or a free-form header of random entries and numbers."""
    if draw(st.booleans()):
        entries, data = {}, b""
        for i in range(draw(st.integers(0, 4))):
            code, size = draw(st.sampled_from([("F32", 4), ("F16", 2), ("BF16", 2), ("I64", 8), ("F64", 8)]))
            shape = draw(st.lists(st.integers(0, 5), max_size=3))
            n = size * (1 if not shape else __import__("math").prod(shape))
            entries[f"t{i}"] = {"dtype": code, "shape": shape, "data_offsets": [len(data), len(data) + n]}
            data += draw(st.binary(min_size=n, max_size=n))
        header = json.dumps(entries).encode()
    else:
        entry = st.fixed_dictionaries({}, optional={"dtype": _dtype, "shape": st.one_of(st.lists(_number, max_size=4), _number),
                                                    "data_offsets": st.one_of(st.lists(_number, max_size=3), _number)})  # fmt: skip
        header_obj = draw(
            st.dictionaries(_names, st.one_of(entry, _number, st.lists(_number, max_size=2)), max_size=5)
        )
        header = json.dumps(header_obj, allow_nan=True).encode()
        if draw(st.integers(0, 9)) == 0:
            depth = draw(st.integers(1, 3000))
            header = b'{"w": ' + b"[" * depth + b"]" * depth + b"}"
        data = draw(st.binary(max_size=128))
    blob = struct.pack("<Q", len(header)) + header + data
    mode = draw(st.integers(0, 5))
    if mode == 1 and blob:
        i = draw(st.integers(0, len(blob) - 1))
        blob = blob[:i] + bytes([blob[i] ^ draw(st.integers(1, 255))]) + blob[i + 1 :]
    elif mode == 2:
        blob = blob[: draw(st.integers(0, len(blob)))]
    elif mode == 3:
        blob = struct.pack("<Q", draw(st.integers(0, 2**64 - 1))) + blob[8:]
    return blob


@FUZZ
@given(blob=_safetensors_bytes())
def test_fuzz_safetensors_reader(blob):
    path = _fresh_case() / "model.safetensors"
    path.write_bytes(blob)
    _exercise(path)


_shard_ref = st.one_of(
    st.sampled_from(["shard-1.safetensors", "shard-2.safetensors", "../outside.safetensors", str(_SENTINEL),
                     "sub/../shard-1.safetensors", "./shard-1.safetensors", "..", ".", "", "x" * 300 + ".safetensors",
                     "missing.safetensors", "shard-1.bin", "shard-1.safetensors\x00"]),
    st.text(max_size=8), st.integers(), st.none(), st.lists(st.integers(), max_size=2),
)  # fmt: skip


@st.composite
def _index_text(draw) -> str:
    if draw(st.integers(0, 9)) == 0:
        depth = draw(st.integers(1, 3000))
        return '{"weight_map": ' + "[" * depth + "]" * depth + "}"
    if draw(st.booleans()):  # a valid map (any non-empty subset), then at most one hostile entry
        valid = {"a": "shard-1.safetensors", "c": "shard-1.safetensors", "b": "shard-2.safetensors"}
        weight_map = {k: v for k, v in valid.items() if draw(st.booleans())} or {"b": "shard-2.safetensors"}
        if draw(st.booleans()):
            weight_map[draw(st.sampled_from(["a", "b", "SENTINEL", "z"]))] = draw(_shard_ref)
    else:
        weight_map = draw(
            st.dictionaries(
                st.sampled_from(["a", "b", "c", "SENTINEL", "../a"]) | st.text(max_size=6),
                _shard_ref,
                max_size=5,
            )
        )
    doc = draw(
        st.sampled_from(
            [{"weight_map": weight_map}, {"metadata": {}, "weight_map": weight_map}, weight_map, [weight_map]]
        )
    )
    return json.dumps(doc)


@FUZZ
@given(text=_index_text())
def test_fuzz_index_reader(text):
    from safetensors.torch import save_file

    case = _fresh_case()
    save_file({"a": torch.ones(2, 2), "c": torch.zeros(3)}, str(case / "shard-1.safetensors"))
    save_file({"b": torch.ones(4)}, str(case / "shard-2.safetensors"))
    (case / "model.safetensors.index.json").write_text(text)
    _exercise(case / "model.safetensors.index.json")


@st.composite
def _torch_object(draw, depth: int = 0):
    base = torch.arange(12, dtype=torch.float32)
    leaves = [
        st.just(torch.ones(2, 3)),
        st.builds(lambda s, k: _strided(base, s, k), st.sampled_from([(3, 4), (4, 4), (2, 2, 2), (3, 3)]),
                  st.sampled_from([(1, 1), (0, 1), (4, 1), (1, 0, 1), (2, 1, 1), (3, 1)])),
        st.just(torch.zeros(1).expand(20000, 20000)),  # 1.6 GB if it were ever materialised
        st.just(torch.randn(3, 3).to_sparse()),
        st.just(torch.empty(5, 5, device="meta")),
        st.just(torch.randn(2, 2, dtype=torch.complex64)),
        st.integers(), st.text(max_size=4), st.none(),
    ]  # fmt: skip
    if depth < 3:
        keys = st.sampled_from(
            [
                "state_dict",
                "model",
                "model_state",
                "ema",
                "optimizer",
                "module.w",
                "_orig_mod.w",
                "w",
                "0",
                "state",
                "param_groups",
            ]
        )
        leaves.append(st.dictionaries(keys, _torch_object(depth + 1), max_size=4))
        leaves.append(st.lists(_torch_object(depth + 1), max_size=3))
    return draw(st.one_of(*leaves))


def _strided(base, size, stride):
    """A view of ``base`` with arbitrary (possibly overlapping) strides, or None when it does not fit."""
    try:
        return base.as_strided(size, stride)
    except RuntimeError:
        return None


@st.composite
def _checkpoint_object(draw):
    """Half the time a state dict (possibly wrapped, prefixed, with optimizer state and odd tensors beside
    it), else anything the generator above makes."""
    if draw(st.booleans()):
        return draw(_torch_object())
    prefix = draw(st.sampled_from(["", "module.", "_orig_mod.", "model."]))
    sd = {
        f"{prefix}layer{i}.weight": torch.randn(draw(st.integers(1, 5)), draw(st.integers(1, 5)))
        for i in range(draw(st.integers(1, 4)))
    }
    if draw(st.booleans()):
        sd[f"{prefix}odd"] = draw(_torch_object(depth=3))
    wrapper = draw(st.sampled_from([None, "state_dict", "model_state", "model", "ema"]))
    obj = sd if wrapper is None else {wrapper: sd, "step": draw(st.integers(0, 9))}
    if wrapper and draw(st.booleans()):
        obj["optimizer_state"] = {
            "state": {0: {"exp_avg_sq": torch.ones(2)}},
            "param_groups": [{"params": [0]}],
        }
    return obj


@FUZZ
@given(obj=_checkpoint_object(), legacy=st.booleans(), cut=st.one_of(st.none(), st.none(), st.floats(0, 1)))
def test_fuzz_torch_reader(obj, legacy, cut):
    path = _fresh_case() / "model.pt"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    except Exception:  # some generated views cannot be saved at all: nothing to read
        return
    if cut is not None:
        raw = path.read_bytes()
        path.write_bytes(raw[: int(len(raw) * cut)])
    _exercise(path)


def test_the_audit_hook_sees_a_read_outside_the_folder():
    """The negative control: the pre-change reader followed ``../`` shard names; the hook must catch that."""
    global _ARMED
    _fresh_case()
    _OPENED_OUTSIDE.clear()
    _ARMED = True
    try:
        _SENTINEL.read_bytes()
    finally:
        _ARMED = False
    assert len(_OPENED_OUTSIDE) == 1 and _OPENED_OUTSIDE[0] == str(_SENTINEL)


def test_fuzzing_reached_both_outcomes():
    """Runs after the fuzz tests in this module: valid checkpoints and refusals were both exercised."""
    if sum(OUTCOMES.values()) >= 2000:  # the whole module ran
        assert OUTCOMES["valid"] >= 200 and OUTCOMES["input_error"] >= 200, OUTCOMES


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    shutil.rmtree(_ROOT, ignore_errors=True)
