"""Where a workload's outputs go: everything derived stays under build/ or results/ of the project root.

Names that become path components (workload and system names) must match ``SAFE_NAME``, and every derived path
is checked by ``inside`` as well, so no name from a YAML file can write outside these folders.
"""

from __future__ import annotations

import re
from pathlib import Path

from workload.errors import WorkloadError

SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def check_name(name: str, what: str) -> str:
    """``name`` if it is safe as one path component (lowercase letters, digits, '.', '_', '-'; no '..')."""
    if not SAFE_NAME.fullmatch(name) or ".." in name:
        raise WorkloadError(f"{what} '{name}' is not a safe folder name: use 1-64 lowercase letters, digits, "
                            "'.', '_' or '-', starting with a letter or digit, without '..'")
    return name


def inside(base: Path, path: Path) -> Path:
    """``path`` if it resolves inside ``base`` (both resolved, symbolic links followed), else a WorkloadError."""
    resolved, root = path.resolve(), base.resolve()
    if resolved != root and not resolved.is_relative_to(root):
        raise WorkloadError(f"{path}: output path escapes {base}")
    return path


def build_dir(root: Path, workload: str) -> Path:
    """``build/<workload>/``: the float and int8 models, encodings, report and plots of one workload."""
    return inside(root / "build", root / "build" / check_name(workload, "workload name"))


def cache_dir(root: Path) -> Path:
    """``build/cache/``: preprocessed image tensors, shared by every workload with the same preprocessing."""
    return root / "build" / "cache"


def wheel_cache(root: Path) -> Path:
    """``build/wheels/``: the pinned weight wheels, fetched once."""
    return root / "build" / "wheels"


def results_root(root: Path) -> Path:
    """``results/``: LoadGen runs, tables and the submission tree."""
    return root / "results"
