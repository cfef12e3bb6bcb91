"""The restricted checkpoint reader: legacy and zip formats, and refusal of anything but tensors."""

from __future__ import annotations

import io
import os
import pickle
import struct
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from calibration.source.checkpoint import LEGACY_MAGIC, LEGACY_PROTOCOL, load_state_dict
from workload.errors import CheckpointError


class _FakeStorage:
    def __init__(self, key: str, data: np.ndarray):
        self.key, self.data = key, data


@pytest.fixture
def fake_torch(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """Importable stand-ins for torch's pickled globals, so tests can write real torch-format files."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    class FloatStorage:  # pickled by reference as torch.FloatStorage
        pass

    class LongStorage:
        pass

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    for obj, module in ((FloatStorage, "torch"), (LongStorage, "torch"), (_rebuild_tensor_v2, "torch._utils")):
        obj.__module__, obj.__qualname__ = module, obj.__name__
    torch.FloatStorage, torch.LongStorage, torch._utils = FloatStorage, LongStorage, utils
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return types.SimpleNamespace(FloatStorage=FloatStorage, LongStorage=LongStorage, rebuild=_rebuild_tensor_v2)


class _Tensor:
    def __init__(self, fake, storage: _FakeStorage, shape, stride, offset=0):
        self.fake, self.storage, self.shape, self.stride, self.offset = fake, storage, shape, stride, offset

    def __reduce__(self):
        return (self.fake.rebuild, (self.storage, self.offset, self.shape, self.stride, False, OrderedDict()))


def _state(fake) -> tuple[OrderedDict, dict[str, np.ndarray], list[_FakeStorage]]:
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    shared = rng.normal(size=20).astype(np.float32)
    count = np.array([7], np.int64)
    storages = [_FakeStorage("0", weight.ravel()), _FakeStorage("1", shared), _FakeStorage("2", count)]
    state = OrderedDict(
        [
            ("conv.weight", _Tensor(fake, storages[0], (4, 3, 3, 3), (27, 9, 3, 1))),
            ("view.transposed", _Tensor(fake, storages[1], (5, 2), (1, 5), offset=10)),  # strided view
            ("bn.num_batches_tracked", _Tensor(fake, storages[2], (), ())),
        ]
    )
    expected = {
        "conv.weight": weight,
        "view.transposed": np.lib.stride_tricks.as_strided(shared[10:], (5, 2), (4, 20)).copy(),
        "bn.num_batches_tracked": np.array(7, np.int64),
    }
    return state, expected, storages


def _pickler(buffer, fake, storages_seen):
    pickler = pickle.Pickler(buffer, protocol=2)

    def persistent_id(obj):
        if isinstance(obj, _FakeStorage):
            storages_seen.append(obj)
            storage_type = fake.LongStorage if obj.data.dtype == np.int64 else fake.FloatStorage
            return ("storage", storage_type, obj.key, "cpu", obj.data.size)
        return None

    pickler.persistent_id = persistent_id
    return pickler


def write_legacy(path: Path, fake) -> dict[str, np.ndarray]:
    state, expected, storages = _state(fake)
    buffer = io.BytesIO()
    for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
        pickle.dump(header, buffer, protocol=2)
    _pickler(buffer, fake, []).dump(state)
    pickle.dump([s.key for s in storages], buffer, protocol=2)
    for storage in storages:
        buffer.write(struct.pack("<q", storage.data.size))
        buffer.write(storage.data.tobytes())
    path.write_bytes(buffer.getvalue())
    return expected


def write_zip(path: Path, fake) -> dict[str, np.ndarray]:
    state, expected, storages = _state(fake)
    buffer = io.BytesIO()
    _pickler(buffer, fake, []).dump(state)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        for storage in storages:
            archive.writestr(f"archive/data/{storage.key}", storage.data.tobytes())
    return expected


@pytest.mark.parametrize("writer", [write_legacy, write_zip])
def test_reads_both_formats_exactly(tmp_path: Path, fake_torch, writer) -> None:
    path = tmp_path / "model.pth"
    expected = writer(path, fake_torch)
    sys.modules.pop("torch")  # the reader must not need torch at all
    sys.modules.pop("torch._utils")
    state = load_state_dict(path)
    assert list(state) == list(expected)
    for name, value in expected.items():
        assert state[name].dtype == value.dtype and np.array_equal(state[name], value), name


def test_real_mobilenetv2_checkpoint(mobilenetv2_state: dict[str, np.ndarray]) -> None:
    assert len(mobilenetv2_state) == 314
    assert mobilenetv2_state["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert mobilenetv2_state["classifier.1.weight"].shape == (1000, 1280)
    assert all(np.isfinite(v).all() for v in mobilenetv2_state.values() if v.dtype == np.float32)


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_refuses_malicious_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    buffer = io.BytesIO()
    for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, {}):
        pickle.dump(header, buffer, protocol=2)
    pickle.dump({"weight": _Exploit(marker)}, buffer, protocol=2)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="refusing to load global 'posix.system'|refusing to load global 'os"):
        load_state_dict(path)
    assert not marker.exists()


def test_refuses_malicious_zip(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(_Exploit(marker), protocol=2))
    with pytest.raises(CheckpointError, match="refusing to load global"):
        load_state_dict(path)
    assert not marker.exists()


def test_corrupt_checkpoint_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(b"\x80\x02not a pickle at all")
    with pytest.raises(CheckpointError, match="broken.pth"):
        load_state_dict(path)


def write_layout(path: Path, fake, shape: tuple, stride: tuple, offset: int = 0, numel: int = 16) -> None:
    """A legacy checkpoint with one tensor of the given layout on a float storage of ``numel`` elements."""
    storage = _FakeStorage("0", np.arange(numel, dtype=np.float32))
    buffer = io.BytesIO()
    for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
        pickle.dump(header, buffer, protocol=2)
    _pickler(buffer, fake, []).dump(OrderedDict([("w", _Tensor(fake, storage, shape, stride, offset))]))
    pickle.dump(["0"], buffer, protocol=2)
    buffer.write(struct.pack("<q", numel) + storage.data.tobytes())
    path.write_bytes(buffer.getvalue())


@pytest.mark.parametrize(("shape", "stride", "offset", "message"), [
    ((4, 4), (4, -1), 0, "negative offset, size or stride"),  # was a segfault: as_strided read before the buffer
    ((4,), (1,), -8, "negative offset, size or stride"),  # was loaded silently from memory before the storage
    ((100000, 100000), (0, 0), 0, "would take 40000000000 bytes"),  # was an attempt to allocate 37.3 GiB
    ((4, 4), (4, 1), 1, "reaches element 16, past the storage's 16 elements"),
    ((4, 4), (4,), 0, "malformed layout"),
    ((4, 4.5), (4, 1), 0, "malformed layout"),
])
def test_malicious_tensor_layouts_are_refused_before_any_view(tmp_path: Path, fake_torch, shape, stride, offset,
                                                              message) -> None:
    path = tmp_path / "layout.pth"
    write_layout(path, fake_torch, shape, stride, offset)
    with pytest.raises(CheckpointError, match=message) as caught:
        load_state_dict(path)
    assert "layout.pth" in str(caught.value)


def test_a_valid_expanded_view_inside_the_budget_still_loads(tmp_path: Path, fake_torch) -> None:
    path = tmp_path / "expanded.pth"
    write_layout(path, fake_torch, (3, 4), (0, 1))  # a broadcast row: stride 0 is legal when the copy is small
    assert np.array_equal(load_state_dict(path)["w"], np.tile(np.arange(4, dtype=np.float32), (3, 1)))
