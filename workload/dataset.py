"""ImageNet in MLPerf's layout: a folder of images, ``val_map.txt`` labels, calibration lists,
preprocessing per workload (OpenCV decoding and resizing, or Pillow's antialiased resize, which is what
torchvision's reference transforms use), and a preprocessed-tensor cache keyed by a hash of the settings.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workload.errors import DataError
from workload.files import write_atomic

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
SAMPLE_NAME = re.compile(r"^(n\d{8})_.+$")


@dataclass(frozen=True)
class ImageRecord:
    name: str  # relative to the dataset folder, as in val_map.txt
    label: int


def resolve_entry(folder: Path, entry: str, source: Path | str) -> Path:
    """Resolve a list entry inside ``folder``; anything that escapes it is an error."""
    root = folder.resolve()
    path = (root / entry).resolve()
    if Path(entry).is_absolute() or not path.is_relative_to(root):
        raise DataError(f"{source}: entry '{entry}' escapes the dataset folder {folder}")
    return path


def _image_files(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise DataError(f"{folder}: dataset folder not found")
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def derive_val_map(folder: Path) -> list[ImageRecord]:
    """Label ``<wnid>_<name>.JPEG`` files by the position of their wnid in the sorted wnid list."""
    names = _image_files(folder)
    if not names:
        raise DataError(f"{folder}: no images found")
    wnids = []
    for name in names:
        match = SAMPLE_NAME.match(Path(name).stem)
        if not match:
            raise DataError(f"{folder / name}: file name is not <wnid>_<name>; give the workload a val_map")
        wnids.append(match.group(1))
    index = {wnid: i for i, wnid in enumerate(sorted(set(wnids)))}
    return [ImageRecord(name, index[wnid]) for name, wnid in zip(names, wnids)]


def read_val_map(folder: Path, val_map: Path, num_classes: int) -> list[ImageRecord]:
    """Read MLPerf's ``<file> <label>`` lines; each file must exist inside ``folder``."""
    if not val_map.is_file():
        raise DataError(f"{val_map}: label map not found")
    records = []
    for number, line in enumerate(val_map.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not re.fullmatch(r"-?\d+", parts[1]):
            raise DataError(f"{val_map}:{number}: expected '<file> <label>', got '{line.strip()}'")
        label = int(parts[1])
        if not 0 <= label < num_classes:
            raise DataError(f"{val_map}:{number}: label {label} out of range 0..{num_classes - 1}")
        resolve_entry(folder, parts[0], f"{val_map}:{number}")
        records.append(ImageRecord(parts[0], label))
    if not records:
        raise DataError(f"{val_map}: empty label map")
    return records


def write_val_map(records: Sequence[ImageRecord], path: Path) -> None:
    write_atomic(path, "".join(f"{r.name} {r.label}\n" for r in records))


def read_calibration_list(list_path: Path, folder: Path) -> list[str]:
    """MLPerf's two formats: one file name a line (option 1), or a file name and a number (option 2)."""
    if not list_path.is_file():
        raise DataError(f"{list_path}: calibration list not found")
    names = []
    for number, line in enumerate(list_path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) > 2 or (len(parts) == 2 and not re.fullmatch(r"-?\d+", parts[1])):
            raise DataError(f"{list_path}:{number}: expected '<file>' or '<file> <number>', got '{line.strip()}'")
        resolve_entry(folder, parts[0], f"{list_path}:{number}")
        names.append(parts[0])
    if not names:
        raise DataError(f"{list_path}: empty calibration list")
    return names


def even_positions(records: Sequence[ImageRecord]) -> list[str]:
    """The default calibration list: the images at even positions of the sorted file list."""
    return [r.name for r in sorted(records, key=lambda r: r.name)[::2]]


@dataclass(frozen=True)
class Dataset:
    """A workload's images: evaluation records (all labelled images) and the calibration names."""

    folder: Path
    records: tuple[ImageRecord, ...]
    calibration_names: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.records]

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.records], dtype=np.int64)


def open_dataset(images: Path, val_map: Path | None, calibration_list: Path | None, num_classes: int) -> Dataset:
    """Evaluation records from ``val_map`` (or derived from sample file names) plus the calibration list."""
    if val_map is None and (images / "val_map.txt").is_file():
        val_map = images / "val_map.txt"
    records = read_val_map(images, val_map, num_classes) if val_map else derive_val_map(images)
    calibration = read_calibration_list(calibration_list, images) if calibration_list else even_positions(records)
    return Dataset(images, tuple(records), tuple(calibration))


def workload_dataset(images: str, val_map: str, calibration_list: str, num_classes: int, root: Path) -> Dataset:
    """``open_dataset`` with the workload's paths resolved against the repository root."""

    def resolve(p: str) -> Path | None:
        return None if not p else (Path(p) if Path(p).is_absolute() else root / p)

    folder = resolve(images)
    assert folder is not None  # the schema's default is never empty
    return open_dataset(folder, resolve(val_map), resolve(calibration_list), num_classes)


