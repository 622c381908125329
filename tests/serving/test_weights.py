"""The legacy torch checkpoint reader: files written here without torch, then the real weights."""

from __future__ import annotations

import collections
import io
import os
import pickle
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.exceptions import FatalWeightsError, UnsafeWeightsError
from serving.weights import load_legacy_state_dict

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
SYS_INFO = {
    "protocol_version": PROTOCOL_VERSION,
    "little_endian": True,
    "type_sizes": {"short": 2, "int": 4, "long": 4},
}
STORAGE_NAMES = {np.dtype("float32"): "FloatStorage", np.dtype("int64"): "LongStorage"}


# -- a writer of the legacy format, as torch.save(..., _use_new_zipfile_serialization=False) -----


@pytest.fixture
def fake_torch(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.SimpleNamespace]:
    """Stand-in ``torch`` and ``torch._utils`` modules so that pickle names the same globals."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args: Any) -> None:
        raise AssertionError("never called: the reader must use its own")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2  # type: ignore[attr-defined]
    storage_types = {}
    for name in STORAGE_NAMES.values():
        storage_type = type(name, (), {"__module__": "torch"})
        setattr(torch, name, storage_type)
        storage_types[name] = storage_type
    torch._utils = utils  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    yield types.SimpleNamespace(rebuild=_rebuild_tensor_v2, storage_types=storage_types)


@dataclass(eq=False)
class FakeStorage:
    key: str
    data: np.ndarray  # 1-D, the storage's elements
    view: tuple[str, int, int] | None = None  # (view key, offset, size) for a storage view


@dataclass(eq=False)
class FakeTensor:
    storage: FakeStorage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    reducer: Any = field(default=None, repr=False)

    def __reduce__(self) -> Any:
        return self.reducer, (
            self.storage,
            self.offset,
            self.shape,
            self.stride,
            False,
            collections.OrderedDict(),
        )


class Evil:
    """Pickles as a call of ``func(*args)``: what an attacker's weights file would contain."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> Any:
        return self.func, self.args


def write_legacy(
    file: io.BufferedIOBase,
    fake_torch: types.SimpleNamespace,
    state: Any,
    storages: list[FakeStorage],
    *,
    sys_info: Any = None,
    numel_override: dict[str, int] | None = None,
) -> None:
    """Write ``state`` in torch's legacy format; tensors are :class:`FakeTensor`."""

    def persistent_id(obj: Any) -> Any:
        if isinstance(obj, FakeStorage):
            storage_type = fake_torch.storage_types[STORAGE_NAMES[obj.data.dtype]]
            root = (numel_override or {}).get(obj.key, obj.data.size)
            return ("storage", storage_type, obj.key, "cpu", root, obj.view)
        return None

    for header in (MAGIC_NUMBER, PROTOCOL_VERSION, SYS_INFO if sys_info is None else sys_info):
        pickle.dump(header, file, protocol=2)
    pickler = pickle.Pickler(file, protocol=2)
    pickler.persistent_id = persistent_id  # type: ignore[method-assign]
    pickler.dump(state)
    keys = sorted(s.key for s in storages)
    pickle.dump(keys, file, protocol=2)
    by_key = {s.key: s for s in storages}
    for key in keys:
        data = by_key[key].data
        file.write(int(data.size).to_bytes(8, "little", signed=True))
        file.write(data.astype(data.dtype.newbyteorder("<")).tobytes())


def tensor(fake_torch: types.SimpleNamespace, storage: FakeStorage, **kwargs: Any) -> FakeTensor:
    return FakeTensor(storage, reducer=fake_torch.rebuild, **kwargs)


def build(fake_torch: types.SimpleNamespace, **kwargs: Any) -> io.BytesIO:
    buffer = io.BytesIO()
    write_legacy(buffer, fake_torch, **kwargs)
    buffer.seek(0)
    return buffer


# -- files written here ---------------------------------------------------------------------


def test_round_trip_of_contiguous_strided_shared_and_scalar_tensors(
    fake_torch: types.SimpleNamespace, tmp_path: Path
) -> None:
    weights = FakeStorage("1", np.arange(24, dtype=np.float32))
    counter = FakeStorage("2", np.array([7], dtype=np.int64))
    state = collections.OrderedDict(
        conv=tensor(fake_torch, weights, offset=0, shape=(2, 3, 4), stride=(12, 4, 1)),
        transposed=tensor(fake_torch, weights, offset=0, shape=(4, 6), stride=(1, 4)),
        tail=tensor(fake_torch, weights, offset=20, shape=(4,), stride=(1,)),
        count=tensor(fake_torch, counter, offset=0, shape=(), stride=()),
    )
    path = tmp_path / "model.pth"
    with path.open("wb") as file:
        write_legacy(file, fake_torch, state=state, storages=[weights, counter])

    loaded = load_legacy_state_dict(path)

    assert list(loaded) == ["conv", "transposed", "tail", "count"]
    np.testing.assert_array_equal(loaded["conv"], np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    np.testing.assert_array_equal(
        loaded["transposed"], np.arange(24, dtype=np.float32).reshape(6, 4).T
    )
    np.testing.assert_array_equal(loaded["tail"], [20, 21, 22, 23])
    assert loaded["count"].shape == () and loaded["count"].dtype == np.int64
    assert int(loaded["count"]) == 7
    assert all(a.flags.c_contiguous and a.flags.writeable for a in loaded.values())


def test_storage_view_from_persistent_id(fake_torch: types.SimpleNamespace) -> None:
    root = FakeStorage("9", np.arange(10, dtype=np.float32), view=("9v", 6, 4))
    state = {"v": tensor(fake_torch, root, offset=1, shape=(2,), stride=(1,))}

    loaded = load_legacy_state_dict(build(fake_torch, state=state, storages=[root]))

    np.testing.assert_array_equal(loaded["v"], [7.0, 8.0])


@pytest.mark.parametrize(
    "evil",
    [
        pytest.param(lambda marker: Evil(os.system, f"touch {marker}"), id="os.system"),
        pytest.param(
            lambda marker: Evil(eval, f"open({str(marker)!r}, 'w').close()"), id="builtins.eval"
        ),
        pytest.param(lambda marker: Evil(Path.touch, Path(marker)), id="pathlib.Path.touch"),
    ],
)
@pytest.mark.parametrize("where", ["state", "sys_info"])
def test_forbidden_global_is_refused_without_running(
    fake_torch: types.SimpleNamespace, tmp_path: Path, evil: Any, where: str
) -> None:
    marker = tmp_path / "pwned"
    weights = FakeStorage("1", np.zeros(4, dtype=np.float32))
    state: dict[str, Any] = {"w": tensor(fake_torch, weights, offset=0, shape=(4,), stride=(1,))}
    payload = evil(marker)
    if where == "state":
        state["x"] = payload
        file = build(fake_torch, state=state, storages=[weights])
    else:
        file = build(fake_torch, state=state, storages=[weights], sys_info=payload)

    with pytest.raises(UnsafeWeightsError, match="refusing to load global"):
        load_legacy_state_dict(file)
    assert not marker.exists()


def test_forbidden_global_is_named_in_the_error(fake_torch: types.SimpleNamespace) -> None:
    weights = FakeStorage("1", np.zeros(1, dtype=np.float32))
    state = {"w": Evil(os.system, "true")}

    with pytest.raises(UnsafeWeightsError, match=r"(posix|os)\.system"):
        load_legacy_state_dict(build(fake_torch, state=state, storages=[weights]))


def test_truncated_file_is_refused(fake_torch: types.SimpleNamespace) -> None:
    weights = FakeStorage("1", np.arange(100, dtype=np.float32))
    state = {"w": tensor(fake_torch, weights, offset=0, shape=(100,), stride=(1,))}
    data = build(fake_torch, state=state, storages=[weights]).getvalue()

    with pytest.raises(FatalWeightsError, match="truncated"):
        load_legacy_state_dict(io.BytesIO(data[:-10]))


def test_tensor_past_the_end_of_its_storage_is_refused(fake_torch: types.SimpleNamespace) -> None:
    weights = FakeStorage("1", np.arange(6, dtype=np.float32))
    state = {"w": tensor(fake_torch, weights, offset=2, shape=(2, 3), stride=(3, 1))}

    with pytest.raises(FatalWeightsError, match="past the end"):
        load_legacy_state_dict(build(fake_torch, state=state, storages=[weights]))


def test_storage_size_disagreeing_with_the_pickle_is_refused(
    fake_torch: types.SimpleNamespace,
) -> None:
    weights = FakeStorage("1", np.arange(6, dtype=np.float32))
    state = {"w": tensor(fake_torch, weights, offset=0, shape=(6,), stride=(1,))}
    file = build(fake_torch, state=state, storages=[weights], numel_override={"1": 1 << 40})

    with pytest.raises(FatalWeightsError, match="elements"):
        load_legacy_state_dict(file)


def test_state_that_is_not_a_dict_of_tensors_is_refused(
    fake_torch: types.SimpleNamespace,
) -> None:
    with pytest.raises(FatalWeightsError, match="state dict"):
        load_legacy_state_dict(build(fake_torch, state={"w": 3}, storages=[]))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (pickle.dumps(1234, protocol=2), "magic number"),
        (b"PK\x03\x04" + b"\x00" * 60, "zip-format"),
        (b"", "malformed"),
    ],
    ids=["bad-magic", "zip", "empty"],
)
def test_not_a_legacy_checkpoint(content: bytes, message: str) -> None:
    with pytest.raises(FatalWeightsError, match=message):
        load_legacy_state_dict(io.BytesIO(content))


# -- the real file ----------------------------------------------------------------------------


def test_real_weights_file(weights_path: Path) -> None:
    state = load_legacy_state_dict(weights_path)

    assert len(state) == 296
    assert not any("_se_" in name for name in state)  # Lite0: no squeeze-excitation
    expected = {
        "_conv_stem.weight": (32, 3, 3, 3),
        "_bn0.running_var": (32,),
        "_blocks.0._depthwise_conv.weight": (32, 1, 3, 3),
        "_blocks.0._project_conv.weight": (16, 32, 1, 1),
        "_blocks.1._expand_conv.weight": (96, 16, 1, 1),
        "_blocks.3._depthwise_conv.weight": (144, 1, 5, 5),
        "_blocks.15._project_conv.weight": (320, 1152, 1, 1),
        "_blocks.15._bn2.bias": (320,),
        "_conv_head.weight": (1280, 320, 1, 1),
        "_bn1.weight": (1280,),
        "_fc.weight": (1000, 1280),
        "_fc.bias": (1000,),
        "_bn0.num_batches_tracked": (),
    }
    for name, shape in expected.items():
        assert state[name].shape == shape, name
    depthwise = [n for n in state if n.endswith("_depthwise_conv.weight")]
    assert len(depthwise) == 16
    floats = [a for n, a in state.items() if not n.endswith("num_batches_tracked")]
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in floats)
    assert all(a.std() > 0 for a in floats if a.size > 1)  # trained, not zeroed
