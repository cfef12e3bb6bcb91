"""Image preprocessing per workload, and the preprocessed-tensor cache."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from workload.config import PreprocessConfig
from workload.dataset import resolve_entry
from workload.errors import DataError

INTERPOLATIONS = {"bilinear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "bicubic": cv2.INTER_CUBIC}


PILLOW_INTERPOLATIONS = {"pillow-bilinear": Image.Resampling.BILINEAR}


def preprocess_image(path: Path, cfg: PreprocessConfig) -> np.ndarray:
    """Decode, resize the shorter side, centre-crop, scale and normalise to a CHW float32 tensor."""
    if not path.is_file():
        raise DataError(f"{path}: image not found")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{path}: cannot decode image (corrupt or not an image)")
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


def cache_key(cfg: PreprocessConfig, folder: Path, names: Sequence[str]) -> str:
    """Hash of the preprocessing settings and of the images' names, sizes and modification times."""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode())
    for name in names:
        stat = (folder / name).stat() if (folder / name).exists() else None
        digest.update(f"{name}:{stat.st_size if stat else -1}:{stat.st_mtime_ns if stat else -1}\n".encode())
    return digest.hexdigest()[:16]


def load_tensors(folder: Path, names: Sequence[str], cfg: PreprocessConfig, cache_dir: Path,
                 show_progress: bool = True) -> np.ndarray:
    """Preprocessed tensors for ``names`` as a read-only memory map (N, 3, crop, crop), cached on disk."""
    if not names:
        raise DataError(f"{folder}: empty image list")
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"tensors-{cache_key(cfg, folder, names)}.npy"
    if not path.exists():
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                            shape=(len(names), 3, cfg.crop, cfg.crop))
            for i, name in enumerate(tqdm(names, desc="preprocess", unit="img", disable=not show_progress)):
                out[i] = preprocess_image(resolve_entry(folder, name, folder), cfg)
            out.flush()
            del out
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
    return np.load(path, mmap_mode="r")
