"""Image preprocessing per workload, and the preprocessed-tensor cache."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from workload.config import PreprocessConfig
from workload.dataset import resolve_entry
from workload.errors import DataError, OutputError
from workload.files import atomic_target, remove_abandoned, writing

INTERPOLATIONS = {"bilinear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "bicubic": cv2.INTER_CUBIC}


PILLOW_INTERPOLATIONS = {"pillow-bilinear": Image.Resampling.BILINEAR}
FINGERPRINT_BYTES = 64 * 1024
FREE_MARGIN_BYTES = 64 * 2**20  # left free beside the cache, for the results written after it


def truncation(path: Path) -> str | None:
    """Why an encoded image is cut short, or None. OpenCV's imread decodes a truncated JPEG "successfully" (libjpeg
    only prints "Premature end of JPEG file" and fills the rest in grey), so the end marker is checked here."""
    with path.open("rb") as handle:
        head = handle.read(8)
        handle.seek(max(0, path.stat().st_size - 8))
        tail = handle.read(8)
    if head[:2] == b"\xff\xd8" and not tail.endswith(b"\xff\xd9"):
        return "truncated JPEG: no end-of-image marker"
    if head == b"\x89PNG\r\n\x1a\n" and tail[:4] != b"IEND":
        return "truncated PNG: no IEND chunk"
    return None


def preprocess_image(path: Path, cfg: PreprocessConfig, allow_truncated: bool = False) -> np.ndarray:
    """Decode, resize the shorter side, centre-crop, scale and normalise to a CHW float32 tensor."""
    if not path.is_file():
        raise DataError(f"{path}: image not found")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{path}: cannot decode image (corrupt or not an image)")
    problem = truncation(path)
    if problem and not allow_truncated:
        raise DataError(f"{path}: {problem} (set dataset.allow_truncated_images: true to use it anyway)")
    if cfg.color == "rgb":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    height, width = image.shape[:2]
    if height > width:
        new_w, new_h = cfg.resize_shorter, int(cfg.resize_shorter * height / width)
    else:
        new_w, new_h = int(cfg.resize_shorter * width / height), cfg.resize_shorter
    if cfg.interpolation in PILLOW_INTERPOLATIONS:  # antialiased when shrinking, like torchvision's Resize
        image = np.asarray(Image.fromarray(image).resize((new_w, new_h), PILLOW_INTERPOLATIONS[cfg.interpolation]))
    else:
        image = cv2.resize(image, (new_w, new_h), interpolation=INTERPOLATIONS[cfg.interpolation])
    top, left = (new_h - cfg.crop) // 2, (new_w - cfg.crop) // 2
    image = image[top : top + cfg.crop, left : left + cfg.crop].astype(np.float32)
    image = (image * np.float32(cfg.scale) - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def fingerprint(path: Path) -> str:
    """Size and a hash of the first and last 64 KiB, whatever the modification time says: it covers the whole
    file for 652 of the 1000 sample images, and the header and the end of the rest (a copy of a folder with one
    image zeroed reused the other folder's tensors when the key was name, size and mtime)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            digest = hashlib.blake2b(handle.read(FINGERPRINT_BYTES), digest_size=16)
            if size > FINGERPRINT_BYTES:
                handle.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
                digest.update(handle.read(FINGERPRINT_BYTES))
    except OSError:
        return "missing"  # preprocess_image names the file when it is read
    return f"{size}:{digest.hexdigest()}"


def cache_key(cfg: PreprocessConfig, folder: Path, names: Sequence[str], allow_truncated: bool = False) -> str:
    """Hash of the preprocessing settings, the resolved folder, and each image's name and content fingerprint."""
    settings = {**dataclasses.asdict(cfg), "folder": str(folder.resolve()), "allow_truncated": allow_truncated}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for name in names:
        digest.update(f"{name}:{fingerprint(folder / name)}\n".encode())
    return digest.hexdigest()[:16]


def write_cache(path: Path, folder: Path, names: Sequence[str], cfg: PreprocessConfig, allow_truncated: bool,
                show_progress: bool) -> None:
    """Preprocess ``names`` into the .npy file ``path`` with ordinary writes, one image at a time.

    Not through a memory map: on a full disk a memory-mapped store faults (SIGBUS) and kills the process with no
    message; an ordinary write fails with ENOSPC, which becomes one ``OutputError`` naming the file. Free space is
    checked first, and the temporary file is removed on any failure.
    """
    shape = (len(names), 3, cfg.crop, cfg.crop)
    needed = int(np.prod(shape)) * 4
    with writing(path):
        free = shutil.disk_usage(path.parent).free
    if free < needed + FREE_MARGIN_BYTES:
        raise OutputError(f"{path.parent}: the preprocessed images need {needed / 2**20:.0f} MiB, "
                          f"only {free / 2**20:.0f} MiB free")
    with atomic_target(path) as tmp, tmp.open("wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": shape})
        for name in tqdm(names, desc="preprocess", unit="img", disable=not show_progress):
            handle.write(preprocess_image(resolve_entry(folder, name, folder), cfg, allow_truncated).tobytes())


def load_tensors(folder: Path, names: Sequence[str], cfg: PreprocessConfig, cache_dir: Path,
                 show_progress: bool = True, allow_truncated: bool = False) -> np.ndarray:
    """Preprocessed tensors for ``names`` as a read-only memory map (N, 3, crop, crop), cached on disk."""
    if not names:
        raise DataError(f"{folder}: empty image list")
    with writing(cache_dir):
        cache_dir.mkdir(parents=True, exist_ok=True)
    remove_abandoned(cache_dir)
    path = cache_dir / f"tensors-{cache_key(cfg, folder, names, allow_truncated)}.npy"
    if not path.exists():
        write_cache(path, folder, names, cfg, allow_truncated, show_progress)
    return np.load(path, mmap_mode="r")
