"""Atomic file writes and hashing, shared by every module that writes a result (``result_set`` builds on them).

Each write goes to a temporary file beside the target and is renamed into place, so a crash or
Ctrl-C never leaves a half-written file that looks complete. A failed write (permission denied, read-only
folder, full disk) is an ``OutputError`` naming the path, with the temporary file removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from workload.errors import OutputError

log = logging.getLogger(__name__)


ABANDONED = re.compile(r"^\.(?:staging-(\d+)-.*|.+\.(\d+)\.tmp.*)$")  # what temporary_path and ResultSet make


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``path`` into one ``OutputError`` line naming it."""
    try:
        yield
    except OSError as err:
        raise OutputError(f"{path}: cannot write ({err.strerror or type(err).__name__})") from err


def temporary_path(path: Path) -> Path:
    """``.<name>.<pid>.tmp<suffix>`` beside ``path``; ``remove_abandoned`` finds those of dead processes."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")


def remove_abandoned(folder: Path) -> None:
    """Temporary files and staging folders in ``folder`` whose process is gone (killed, or died of a signal)."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        match = ABANDONED.match(path.name)
        if match and not Path(f"/proc/{match.group(1) or match.group(2)}").exists():
            log.info("removing %s, left by an interrupted run", path)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


@contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """The temporary path to write ``path``'s contents to; renamed into place when the block ends without an
    error, removed otherwise. An ``OSError`` on the way is one ``OutputError`` naming ``path``."""
    tmp = temporary_path(path)
    with writing(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes | str) -> None:
    with atomic_target(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)


def write_json(path: Path, document: Any) -> None:
    write_atomic(path, json.dumps(document, indent=1, default=str) + "\n")


def save_array(path: Path, array: np.ndarray) -> None:
    with atomic_target(path) as tmp:  # keeps the .npy suffix, so np.save adds none
        np.save(tmp, np.ascontiguousarray(array))


def save_figure(figure: Any, path: Path, dpi: int = 90) -> None:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_target(path) as tmp:
            figure.savefig(tmp, dpi=dpi)
    finally:
        plt.close(figure)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
