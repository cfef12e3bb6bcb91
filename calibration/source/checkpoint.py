"""Read PyTorch ``.pth`` state dicts with numpy alone, without executing any code.

Both of torch's formats are supported:
- the legacy stream (torch < 1.6): magic number, protocol version, sys info, the pickled
  state dict whose storages are persistent ids, the list of storage keys, then each
  storage's raw bytes preceded by its int64 element count;
- the zip archive (torch >= 1.6): ``<prefix>/data.pkl`` plus one ``<prefix>/data/<key>`` per storage.

The unpickler resolves only the tensor-rebuild globals. Any other global is refused, so a
checkpoint can never run code.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from workload.errors import CheckpointError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


@dataclass
class _StorageRef:
    key: str
    dtype: np.dtype
    numel: int


@dataclass
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_unused) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        raise ValueError(f"tensor built on {type(storage).__name__}, not on a storage")  # the caller names the file
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))  # checked by _check_layout


def _rebuild_parameter(data, *_unused):
    return data


_ALLOWED_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
}


class _RestrictedUnpickler(pickle._Unpickler):
    """Resolves tensor-rebuild globals only; storages come back as ``_StorageRef``.

    It is the pure-Python unpickler on purpose: the C one sizes its memo table by the largest index a ``PUT``
    names, so one damaged 4-byte index made it allocate gigabytes (found by the fuzz test); this one keeps the
    memo in a dict. The pickled part of a checkpoint is small (54 KB of 14 MB for MobileNetV2), so it costs little.
    """

    def __init__(self, file: IO[bytes], source: str):
        super().__init__(file)
        self._source = source
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_FUNCTIONS:
            return _ALLOWED_FUNCTIONS[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        raise CheckpointError(
            f"{self._source}: refusing to load global '{module}.{name}'; "
            "only tensor-rebuild globals are allowed in a checkpoint"
        )

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self._source}: unexpected persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self._source}: unknown storage type {storage_type!r}")
        if len(pid) > 5 and pid[5] is not None:
            raise CheckpointError(f"{self._source}: storage views are not supported")
        key = str(key)
        ref = self.storages.get(key)
        if ref is None:
            ref = _StorageRef(key, storage_type.dtype, int(numel))
            self.storages[key] = ref
        return ref


def _check_layout(ref: _TensorRef, storage_numel: int, budget_bytes: int, source: str) -> None:
    """Offset, sizes and strides must describe a view inside its storage, and the copy must fit the budget.

    Checked before any view is built: ``as_strided`` trusts its arguments, so a negative stride or offset reads
    memory outside the buffer (a segfault, or garbage loaded silently), and stride 0 with a huge shape makes
    the copy allocate far more than the file holds.
    """
    name = f"{source}: tensor on storage {ref.storage.key}"
    values = (ref.offset, *ref.shape, *ref.stride)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values) or len(ref.shape) != len(ref.stride):
        raise CheckpointError(f"{name} has a malformed layout (sizes {ref.shape}, strides {ref.stride})")
    if min(values) < 0:
        raise CheckpointError(f"{name} has a negative offset, size or stride "
                              f"(offset {ref.offset}, sizes {ref.shape}, strides {ref.stride})")
    numel = int(np.prod(ref.shape, dtype=object))
    if numel == 0:
        return
    last = ref.offset + sum((s - 1) * st for s, st in zip(ref.shape, ref.stride))
    if last >= storage_numel:
        raise CheckpointError(f"{name} reaches element {last}, past the storage's {storage_numel} elements")
    if numel * ref.storage.dtype.itemsize > budget_bytes:
        raise CheckpointError(f"{name} would take {numel * ref.storage.dtype.itemsize} bytes, more than the "
                              f"{budget_bytes} left of the file's size")


def _materialize(obj: Any, buffers: dict[str, np.ndarray], source: str, budget: list[int]) -> Any:
    """Copy every tensor view out of its storage; ``budget`` is the bytes all copies may still take."""
    if isinstance(obj, _TensorRef):
        flat = buffers[obj.storage.key]
        _check_layout(obj, flat.size, budget[0], source)
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[obj.offset :], shape=obj.shape, strides=tuple(st * itemsize for st in obj.stride)
        )
        budget[0] -= view.size * itemsize
        return np.array(view, copy=True)
    if isinstance(obj, dict):
        return OrderedDict((k, _materialize(v, buffers, source, budget)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v, buffers, source, budget) for v in obj)
    return obj


def _load_legacy(stream: IO[bytes], source: str, budget: int) -> dict[str, np.ndarray]:
    def plain_load() -> Any:
        return _RestrictedUnpickler(stream, source).load()

    if plain_load() != LEGACY_MAGIC:
        raise CheckpointError(f"{source}: not a PyTorch checkpoint (bad magic number)")
    if plain_load() != LEGACY_PROTOCOL:
        raise CheckpointError(f"{source}: unsupported legacy protocol version")
    plain_load()  # sys info: endianness and type sizes; torch itself only writes little-endian here
    unpickler = _RestrictedUnpickler(stream, source)
    state = unpickler.load()
    keys = plain_load()
    buffers: dict[str, np.ndarray] = {}
    for key in keys:
        ref = unpickler.storages[str(key)]
        (numel,) = struct.unpack("<q", stream.read(8))
        raw = stream.read(numel * ref.dtype.itemsize)
        if len(raw) != numel * ref.dtype.itemsize:
            raise CheckpointError(f"{source}: truncated storage {key}")
        buffers[str(key)] = np.frombuffer(raw, dtype=ref.dtype)
    return _materialize(state, buffers, source, [budget])


def _read_member(archive: zipfile.ZipFile, name: str, budget: int, source: str) -> bytes:
    """A member's bytes, refused before decompression when it declares more than the budget."""
    if archive.getinfo(name).file_size > budget:
        raise CheckpointError(f"{source}: member {name} declares more bytes than the file could hold")
    return archive.read(name)


def _load_zip(archive: zipfile.ZipFile, source: str, budget: int) -> dict[str, np.ndarray]:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
        raise CheckpointError(f"{source}: zip checkpoint without a single data.pkl")
    prefix = pickles[0][: -len("data.pkl")]
    unpickler = _RestrictedUnpickler(io.BytesIO(_read_member(archive, pickles[0], budget, source)), source)
    state = unpickler.load()
    buffers: dict[str, np.ndarray] = {}
    for key, ref in unpickler.storages.items():
        try:
            raw = _read_member(archive, f"{prefix}data/{key}", budget, source)
        except KeyError as err:
            raise CheckpointError(f"{source}: missing storage {key}") from err
        buffers[key] = np.frombuffer(raw, dtype=ref.dtype)[: ref.numel]
    return _materialize(state, buffers, source, [budget])


def load_state_dict(source: bytes | Path, name: str | None = None) -> dict[str, np.ndarray]:
    """Return the checkpoint's state dict as ``name -> numpy array``. Nothing in it is executed."""
    label = name or str(source)
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    budget = 2 * len(data)  # every tensor copy together: views may share a storage, but never a huge expansion
    try:
        if data[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                state = _load_zip(archive, label, budget)
        else:
            state = _load_legacy(io.BytesIO(data), label, budget)
    except CheckpointError:
        raise
    except Exception as err:  # a damaged pickle raises many built-in types; none of them ran code
        raise CheckpointError(f"{label}: corrupt checkpoint ({type(err).__name__}: {err})") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise CheckpointError(f"{label}: expected a state dict of tensors")
    return dict(state)
