"""Where a workload's outputs go: everything derived stays under build/ or results/ of the project root."""

from __future__ import annotations

from pathlib import Path


def build_dir(root: Path, workload: str) -> Path:
    """``build/<workload>/``: the float and int8 models, encodings, report and plots of one workload."""
    return root / "build" / workload


def cache_dir(root: Path) -> Path:
    """``build/cache/``: preprocessed image tensors, shared by every workload with the same preprocessing."""
    return root / "build" / "cache"


def wheel_cache(root: Path) -> Path:
    """``build/wheels/``: the pinned weight wheels, fetched once."""
    return root / "build" / "wheels"


def results_root(root: Path) -> Path:
    """``results/``: LoadGen runs, tables and the submission tree."""
    return root / "results"
