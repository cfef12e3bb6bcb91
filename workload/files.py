"""Atomic file writes and hashing, shared by every module that writes a result.

Each write goes to a temporary file beside the target and is renamed into place, so a crash or
Ctrl-C never leaves a half-written file that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")


def write_atomic(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, document: Any) -> None:
    write_atomic(path, json.dumps(document, indent=1, default=str) + "\n")


def save_array(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)  # keeps the .npy suffix, so np.save adds none
    try:
        np.save(tmp, np.ascontiguousarray(array))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def save_figure(figure: Any, path: Path, dpi: int = 90) -> None:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        figure.savefig(tmp, dpi=dpi)
        tmp.replace(path)
    finally:
        plt.close(figure)
        tmp.unlink(missing_ok=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
