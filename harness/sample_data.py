"""``make data``: fill ``data/imagenet-samples`` with the 1000 labelled sample images and a val_map.txt.

Copies from a local folder when one is given (development and CI point it at the shared copy);
otherwise downloads the public archive of EliSchwartz/imagenet-sample-images, for real users.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from workload.dataset import IMAGE_SUFFIXES, derive_val_map, write_val_map
from workload.errors import DataError
from workload.files import atomic_target

log = logging.getLogger(__name__)

ARCHIVE_URL = "https://github.com/EliSchwartz/imagenet-sample-images/archive/refs/heads/master.zip"
EXPECTED_IMAGES = 1000


def fill_sample_images(target: Path, source: Path | None) -> Path:
    """Populate ``target`` once; returns it. A partial copy is never left looking complete."""
    val_map = target / "val_map.txt"
    if val_map.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staging = Path(tmp) / "images"
        staging.mkdir()
        if source is not None:
            if not source.is_dir():
                raise DataError(f"{source}: IMAGENET_SAMPLES_DIR is not a folder")
            log.info("copying sample images from %s", source)
            files = [p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
            for path in files:
                shutil.copy2(path, staging / path.name)
        else:
            log.info("downloading %s", ARCHIVE_URL)
            archive = Path(tmp) / "samples.zip"
            try:
                urllib.request.urlretrieve(ARCHIVE_URL, archive)
            except OSError as err:
                raise DataError(f"cannot download the sample images from {ARCHIVE_URL}: {err}") from err
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    name = Path(member).name
                    if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                        (staging / name).write_bytes(zf.read(member))
        records = derive_val_map(staging)
        if len(records) != EXPECTED_IMAGES:
            log.warning("%d sample images found, expected %d", len(records), EXPECTED_IMAGES)
        write_val_map(records, staging / "val_map.txt")
        if target.exists():
            shutil.rmtree(target)
        staging.replace(target)
    return target


CALIBRATION_LISTS_URL = "https://raw.githubusercontent.com/mlcommons/inference/master/calibration/ImageNet/"
CALIBRATION_LISTS = ("cal_image_list_option_1.txt", "cal_image_list_option_2.txt")


def fill_calibration_lists(target: Path, source: Path | None) -> Path:
    """Place MLPerf's two official ImageNet calibration lists in ``target`` (copied, or downloaded)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in CALIBRATION_LISTS:
        path = target / name
        if path.is_file():
            continue
        if source is not None and not (source / name).is_file():
            raise DataError(f"{source / name}: MLPerf calibration list not found")
        with atomic_target(path) as tmp:
            if source is not None:
                shutil.copyfile(source / name, tmp)
            else:
                try:
                    urllib.request.urlretrieve(CALIBRATION_LISTS_URL + name, tmp)
                except OSError as err:
                    raise DataError(f"cannot download {CALIBRATION_LISTS_URL + name}: {err}") from err
    return target
