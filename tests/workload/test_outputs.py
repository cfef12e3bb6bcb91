"""Issue 17's output and input cases in the lowest layer: safe names and paths (case 2), failed writes (case 7),
truncated images (case 8), the cache key (case 9) and result sets that another caller extends (case 1)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

import workload.preprocess as preprocess
from workload.config import PreprocessConfig, workload_from_dict
from workload.errors import DataError, OutputError, WorkloadError
from workload.files import save_array, write_atomic, write_json
from workload.paths import build_dir, inside
from workload.preprocess import cache_key, load_tensors, preprocess_image
from workload.result_set import ResultSet, read_finished

ROOT = Path(__file__).resolve().parents[2]
CFG = PreprocessConfig(resize_shorter=16, crop=16)


def workload(name: str, system: str = "cpu-onnxruntime") -> dict:
    data = yaml.safe_load((ROOT / "workloads" / "mobilenetv2.yaml").read_text())
    data["name"] = name
    data["harness"]["system"] = system
    return data


@pytest.mark.parametrize("name", ["../../../escaped_name_probe", "..", "a/b", "Upper", ".hidden", "", "x" * 65])
def test_unsafe_workload_names_are_refused(name: str) -> None:
    """Case 2: ``name: ../../../escaped_name_probe`` wrote the whole build outside the repository, status 0."""
    with pytest.raises(WorkloadError, match=r"w.yaml: name '.*' is not a safe folder name"):
        workload_from_dict(workload(name), "w.yaml")


def test_unsafe_system_names_are_refused() -> None:
    with pytest.raises(WorkloadError, match=r"w.yaml: harness.system '../up' is not a safe folder name"):
        workload_from_dict(workload("ok", system="../up"), "w.yaml")


def test_derived_paths_stay_inside(tmp_path: Path) -> None:
    assert build_dir(tmp_path, "efficientnet-lite0") == tmp_path / "build" / "efficientnet-lite0"
    with pytest.raises(WorkloadError, match="not a safe folder name"):
        build_dir(tmp_path, "../x")
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "link").symlink_to(tmp_path.parent)  # a name can be safe and still lead out
    with pytest.raises(WorkloadError, match="escapes"):
        inside(tmp_path / "build", tmp_path / "build" / "link" / "x")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith("."))


@pytest.mark.parametrize(("code", "reason"), [(errno.ENOSPC, "No space left on device"),
                                              (errno.EACCES, "Permission denied"),
                                              (errno.EROFS, "Read-only file system")])
def test_failed_writes_are_one_error_naming_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int,
                                                     reason: str) -> None:
    """Case 7 by fault injection (tests run as root, so chmod cannot make a folder read-only for them)."""
    original = Path.write_bytes

    def failing(self: Path, data: bytes) -> int:
        original(self, data[: len(data) // 2])  # half written, then the disk fails
        raise OSError(code, os.strerror(code), str(self))

    monkeypatch.setattr(Path, "write_bytes", failing)
    monkeypatch.setattr(Path, "write_text", lambda self, text: failing(self, text.encode()))
    for write in (lambda p: write_atomic(p, b"x" * 100), lambda p: write_json(p, {"a": 1})):
        target = tmp_path / "build" / "w" / "model.int8.onnx"
        with pytest.raises(OutputError, match=rf"^{target}: cannot write \({reason}\)$"):
            write(target)
        assert not target.exists() and leftovers(tmp_path) == []
    monkeypatch.setattr(np, "save", lambda path, _a: failing(Path(path), b"y" * 100))
    with pytest.raises(OutputError, match="tensors.npy: cannot write"):
        save_array(tmp_path / "tensors.npy", np.zeros(3))
    assert leftovers(tmp_path) == []


@pytest.fixture
def images(tiny_dataset: Path) -> Path:
    return tiny_dataset


def test_cache_on_a_full_disk_is_one_error_and_leaves_nothing(images: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Case 7: a full disk under build/cache killed the process with SIGBUS (a memory-mapped store) and left
    ``.tmp-<pid>-tensors-*.npy``. Free space is now checked first, and the writes are ordinary ones."""
    names = sorted(p.name for p in images.iterdir())
    cache = tmp_path / "cache"
    monkeypatch.setattr(preprocess.shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(1, 1, 1 << 20))
    with pytest.raises(OutputError, match=rf"^{cache}: the preprocessed images need 0 MiB, only 1 MiB free$"):
        load_tensors(images, names, CFG, cache, show_progress=False)
    monkeypatch.undo()
    writes = []

    class FullDisk:  # the file handle's write fails with ENOSPC after the first image, as a full disk does
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data: bytes) -> int:
            writes.append(len(data))
            if len(writes) > 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.handle.write(data)

    original_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, mode="r", *a, **k: FullDisk(original_open(self, mode, *a, **k))
                        if "w" in mode else original_open(self, mode, *a, **k))
    with pytest.raises(OutputError, match=r"tensors-\w+\.npy: cannot write \(No space left on device\)"):
        load_tensors(images, names, CFG, cache, show_progress=False)
    assert list(cache.iterdir()) == []


def test_cache_on_a_real_full_filesystem(images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same on a 1 MiB tmpfs, when this machine lets the test mount one (root in a permissive container)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True,
                      check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here; the fault-injection test above covers the same path")
    try:
        names = sorted(p.name for p in images.iterdir()) * 100  # 400 images of 3 KiB: more than 1 MiB
        monkeypatch.setattr(preprocess, "FREE_MARGIN_BYTES", -(1 << 30))  # let the write itself meet ENOSPC
        with pytest.raises(OutputError, match="No space left on device"):
            load_tensors(images, names, CFG, mount / "cache", show_progress=False)
        assert list((mount / "cache").iterdir()) == []
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_abandoned_temporary_cache_files_are_removed(images: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    orphan = cache / ".tensors-0123.npy.99999999.tmp.npy"  # a pid that cannot exist: its process is gone
    orphan.write_bytes(b"half")
    load_tensors(images, sorted(p.name for p in images.iterdir()), CFG, cache, show_progress=False)
    assert not orphan.exists() and len(list(cache.iterdir())) == 1


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_half_truncated_jpeg_is_corrupt_unless_allowed(images: Path) -> None:
    """Case 8: libjpeg printed "Premature end of JPEG file" and the damaged image was used for calibration."""
    path = sorted(images.iterdir())[0]
    truncate(path)
    with pytest.raises(DataError, match=rf"^{path}: truncated JPEG: no end-of-image marker \(set "
                                        r"dataset.allow_truncated_images: true"):
        preprocess_image(path, CFG)
    assert preprocess_image(path, CFG, allow_truncated=True).shape == (3, 16, 16)
    data = workload("ok")
    data["dataset"]["allow_truncated_images"] = "yes"
    with pytest.raises(WorkloadError, match="allow_truncated_images: must be true or false"):
        workload_from_dict(data, "w.yaml")


def test_cache_key_follows_the_folder_and_the_contents(images: Path, tmp_path: Path) -> None:
    """Case 9: a copy of the dataset with one image zeroed, same size and mtime, reused the other's tensors."""
    names = sorted(p.name for p in images.iterdir())
    copy = tmp_path / "copy"
    shutil.copytree(images, copy)
    assert cache_key(CFG, copy, names) != cache_key(CFG, images, names)  # another folder
    victim = copy / names[1]
    stat = victim.stat()
    victim.write_bytes(bytes(stat.st_size))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    key = cache_key(CFG, copy, names)
    head = copy / names[2]
    data = bytearray(head.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a change inside the first or last 64 KiB of this image
    stat = head.stat()
    head.write_bytes(bytes(data))
    os.utime(head, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache_key(CFG, copy, names) != key


def test_another_caller_extends_a_finished_result(tmp_path: Path) -> None:
    """The API an HTP export uses to add its files to a calibration's result (see workload/result_set.py)."""
    folder = tmp_path / "build" / "w"
    with pytest.raises(OutputError, match="no finished result to add files to"):
        ResultSet.extend(folder, "report.json")
    first = ResultSet(folder, "report.json")
    first.stage("model.int8.onnx").write_bytes(b"int8")
    first.publish({"calibration": {"range": "minmax"}})
    extra = ResultSet.extend(folder, "report.json")
    extra.stage("model.int8.qnn.onnx").write_bytes(b"qnn")
    extra.stage("plots/htp.png").write_bytes(b"png")
    report = extra.publish({"htp": {"ok": True}})
    assert read_finished(folder, "report.json") == report
    assert set(report["files"]) == {"model.int8.onnx", "model.int8.qnn.onnx", "plots/htp.png"}
    assert report["calibration"] == {"range": "minmax"} and report["htp"] == {"ok": True}
    (folder / "model.int8.qnn.onnx").write_bytes(b"changed")
    assert read_finished(folder, "report.json") is None
    assert leftovers(folder) == []


def test_a_new_result_removes_the_files_only_the_previous_one_listed(tmp_path: Path) -> None:
    """A CPU-only calibration after an HTP one: the HTP files describe the older encodings and go, but only once
    the new report is written, and a name read from the old report never reaches outside the folder."""
    folder = tmp_path / "build" / "w"
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"keep")
    first = ResultSet(folder, "report.json")
    for name in ("model.int8.onnx", "model.int8.qnn.onnx", "plots/htp.png"):
        first.stage(name).write_bytes(name.encode())
    first.publish({})
    report = json.loads((folder / "report.json").read_text())
    report["files"]["../../outside.onnx"] = "0" * 64  # a tampered report
    (folder / "report.json").write_text(json.dumps(report))
    second = ResultSet(folder, "report.json")
    second.stage("model.int8.onnx").write_bytes(b"new")
    assert (folder / "model.int8.qnn.onnx").is_file()  # still there while the new result is only staged
    second.publish({})
    assert not (folder / "model.int8.qnn.onnx").exists() and not (folder / "plots" / "htp.png").exists()
    assert (folder / "model.int8.onnx").read_bytes() == b"new" and outside.read_bytes() == b"keep"
    assert set(read_finished(folder, "report.json")["files"]) == {"model.int8.onnx"}
