"""ImageNet layout, calibration lists, preprocessing and the bad-input errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from workload.config import PreprocessConfig
from workload.dataset import derive_val_map, even_positions, open_dataset, read_calibration_list, read_val_map
from workload.errors import DataError
from workload.preprocess import load_tensors, preprocess_image

SHARED_CALIBRATION = Path(__file__).resolve().parents[3] / "shared" / "data" / "mlperf-calibration"


def test_derived_labels_follow_sorted_wnids(sample_images: Path) -> None:
    records = derive_val_map(sample_images)
    assert len(records) == 1000
    assert records[0].name == "n01440764_tench.JPEG" and records[0].label == 0
    assert records[-1].label == 999 and sorted(r.label for r in records) == list(range(1000))
    calibration = even_positions(records)
    assert len(calibration) == 500 and calibration[1] == records[2].name


def test_mlperf_calibration_lists_both_formats(tmp_path: Path) -> None:
    folder = tmp_path / "ILSVRC2012_img_val"
    folder.mkdir()
    for option in (1, 2):
        names = read_calibration_list(SHARED_CALIBRATION / f"cal_image_list_option_{option}.txt", folder)
        assert len(names) == 500 and all(n.startswith("ILSVRC2012_val_") for n in names)


def test_val_map_and_preprocessing(tiny_dataset: Path) -> None:
    names = sorted(p.name for p in tiny_dataset.iterdir())
    (tiny_dataset / "val_map.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(names)))
    dataset = open_dataset(tiny_dataset, None, None, 1000)
    assert dataset.names == names and dataset.labels.tolist() == [0, 1, 2, 3]
    cfg = PreprocessConfig()
    x = preprocess_image(tiny_dataset / names[0], cfg)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert -2.2 < x.min() < x.max() < 2.7  # normalised with ImageNet mean/std
    mlperf = PreprocessConfig(color="rgb", interpolation="area", scale=1.0, mean=(123.68, 116.78, 103.94),
                              std=(1.0, 1.0, 1.0))
    y = preprocess_image(tiny_dataset / names[0], mlperf)
    assert y.min() >= -124 and y.max() <= 152


def test_pillow_bilinear_antialiases_where_opencv_bilinear_aliases(tmp_path: Path) -> None:
    """A one-pixel checkerboard shrunk to 256: Pillow's resize (torchvision's) averages it to flat grey,
    OpenCV's bilinear samples it and keeps a strong pattern."""
    board = (np.indices((400, 520)).sum(axis=0) % 2 * 255).astype(np.uint8)
    path = tmp_path / "board.png"
    cv2.imwrite(str(path), np.repeat(board[:, :, None], 3, axis=2))
    spread = {interp: preprocess_image(path, PreprocessConfig(interpolation=interp, mean=(0.0,) * 3,
                                                              std=(1.0,) * 3)).std()
              for interp in ("bilinear", "pillow-bilinear")}
    assert spread["pillow-bilinear"] < 0.05 < spread["bilinear"]


def test_preprocessed_cache_is_reused_and_keyed_by_settings(tiny_dataset: Path, tmp_path: Path) -> None:
    names = sorted(p.name for p in tiny_dataset.iterdir())
    cache = tmp_path / "cache"
    first = load_tensors(tiny_dataset, names, PreprocessConfig(), cache, show_progress=False)
    files = list(cache.iterdir())
    again = load_tensors(tiny_dataset, names, PreprocessConfig(), cache, show_progress=False)
    assert list(cache.iterdir()) == files and np.array_equal(first, again)
    load_tensors(tiny_dataset, names, PreprocessConfig(mean=(0.5,) * 3, std=(0.5,) * 3), cache, show_progress=False)
    assert len(list(cache.iterdir())) == 2
    assert not any(p.name.startswith(".tmp") for p in cache.iterdir())


def test_missing_image(tiny_dataset: Path) -> None:
    (tiny_dataset / "val_map.txt").write_text("nope.JPEG 3\n")
    with pytest.raises(DataError, match="nope.JPEG: image not found"):
        preprocess_image(tiny_dataset / "nope.JPEG", PreprocessConfig())


def test_corrupt_image(tiny_dataset: Path) -> None:
    bad = tiny_dataset / "n99999999_broken.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(DataError, match="n99999999_broken.JPEG: cannot decode image"):
        preprocess_image(bad, PreprocessConfig())


def test_list_entry_escaping_the_folder(tiny_dataset: Path, tmp_path: Path) -> None:
    listing = tmp_path / "cal.txt"
    listing.write_text("../../etc/passwd\n")
    with pytest.raises(DataError, match=r"cal.txt:1: entry '\.\./\.\./etc/passwd' escapes the dataset folder"):
        read_calibration_list(listing, tiny_dataset)
    val_map = tmp_path / "val_map.txt"
    val_map.write_text("/etc/passwd 1\n")
    with pytest.raises(DataError, match="escapes the dataset folder"):
        read_val_map(tiny_dataset, val_map, 1000)


def test_label_out_of_range(tiny_dataset: Path, tmp_path: Path) -> None:
    val_map = tmp_path / "val_map.txt"
    val_map.write_text("a.JPEG 1000\n")
    with pytest.raises(DataError, match=r"val_map.txt:1: label 1000 out of range 0\.\.999"):
        read_val_map(tiny_dataset, val_map, 1000)


def test_empty_lists(tiny_dataset: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="empty.txt: empty calibration list"):
        read_calibration_list(empty, tiny_dataset)
    with pytest.raises(DataError, match="empty.txt: empty label map"):
        read_val_map(tiny_dataset, empty, 1000)
    with pytest.raises(DataError, match="empty image list"):
        load_tensors(tiny_dataset, [], PreprocessConfig(), tmp_path / "c", show_progress=False)
