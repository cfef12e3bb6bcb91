"""The files of one result (a calibration's models, encodings, plots and report) made visible together.

A ``ResultSet`` stages every file in a hidden folder beside the final ones, ``<folder>/.staging-<pid>-*/``.
``publish`` then (1) rewrites the folder's current report as ``"status": "incomplete"``, so it no longer vouches
for anything, (2) renames each staged file into place, and (3) writes the new report last, with
``"status": "complete"`` and the sha256 of every file of the set. ``read_finished`` returns a report only when it
is complete and every file still has its recorded hash. A crash or Ctrl-C at any point therefore leaves either
the previous finished result or none, never a report that describes other files.

Adding files to a finished result (another caller's extra outputs of the same calibration, such as an HTP
model): ``ResultSet.extend(folder, report_name)`` starts from the finished report; ``stage(name)`` gives the path
to write each new file to; ``publish({"htp": {...}})`` merges the new sections into the report and the new files
into its ``files`` table, with the same three steps. A file left in the folder but absent from the finished
report's ``files`` is not part of the result; the files of the previous result that the new one does not list are
removed once the new report is written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from workload.errors import OutputError
from workload.files import remove_abandoned, sha256_of, write_json, writing

log = logging.getLogger(__name__)

COMPLETE = "complete"
INCOMPLETE = "incomplete"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def read_finished(folder: Path, report_name: str) -> dict[str, Any] | None:
    """The folder's report if it is complete and every file it lists is there with its recorded sha256."""
    path = folder / report_name
    report = _read_json(path)
    if report is None:
        return None
    if report.get("status") != COMPLETE or not isinstance(report.get("files"), dict):
        log.info("%s is not a finished report", path)
        return None
    for name, digest in report["files"].items():
        file = folder / name
        if not file.is_file() or sha256_of(file) != digest:
            log.info("%s: %s changed since the report was written", path, name)
            return None
    return report


class ResultSet:
    """Stage the files of one result, then publish them together under one report (see the module's text)."""

    def __init__(self, folder: Path, report_name: str, base: dict[str, Any] | None = None) -> None:
        self.folder = folder
        self.report_name = report_name
        self._base = dict(base or {})
        self._staging: Path | None = None
        self._staged: list[str] = []

    @classmethod
    def extend(cls, folder: Path, report_name: str) -> ResultSet:
        """A set that adds files and report sections to the finished result in ``folder``."""
        report = read_finished(folder, report_name)
        if report is None:
            raise OutputError(f"{folder / report_name}: no finished result to add files to (calibrate first)")
        return cls(folder, report_name, report)

    def stage(self, name: str) -> Path:
        """Where to write the set's file ``name`` (relative to the folder, e.g. ``plots/x.png``)."""
        if Path(name).is_absolute() or ".." in Path(name).parts or name == self.report_name:
            raise ValueError(f"{name!r} cannot be a file of this result set")  # a caller's bug, not user input
        if self._staging is None:
            with writing(self.folder):
                self.folder.mkdir(parents=True, exist_ok=True)
                remove_abandoned(self.folder)
                self._staging = Path(tempfile.mkdtemp(prefix=f".staging-{os.getpid()}-", dir=self.folder))
        path = self._staging / name
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
        if name not in self._staged:
            self._staged.append(name)
        return path

    def publish(self, sections: dict[str, Any]) -> dict[str, Any]:
        """Make the staged files and the report visible; returns the finished report."""
        if self._staging is None:
            raise RuntimeError("publish() before any stage()")  # a caller's bug
        missing = [n for n in self._staged if not (self._staging / n).is_file()]
        if missing:
            raise OutputError(f"{self._staging}: staged files never written: {', '.join(missing)}")
        files = dict(self._base.get("files", {}))
        files.update({name: sha256_of(self._staging / name) for name in self._staged})
        report = {**self._base, **sections, "status": COMPLETE, "files": files}
        report_path = self.folder / self.report_name
        previous = _read_json(report_path)
        if previous is not None:  # from here until the last write, the folder holds no finished result
            write_json(report_path, {**previous, "status": INCOMPLETE})
        for name in self._staged:
            target = self.folder / name
            with writing(target):
                target.parent.mkdir(parents=True, exist_ok=True)
                (self._staging / name).replace(target)
        write_json(report_path, report)
        self._remove_superseded(previous, files)
        self.discard()
        return report

    def _remove_superseded(self, previous: dict[str, Any] | None, files: dict[str, str]) -> None:
        """Delete the files the previous finished result listed that this one does not (an earlier calibration's
        HTP models, say), once the new report is in place: they describe an older result."""
        listed = previous.get("files") if previous else None
        if not isinstance(listed, dict):
            return
        for name in listed:
            if not isinstance(name, str) or name in files or Path(name).is_absolute() or ".." in Path(name).parts:
                continue  # a name read from a file never leads outside the folder
            stale = self.folder / name
            if stale.is_file():
                log.info("removing %s: the new result does not include it", stale)
                stale.unlink()

    def discard(self) -> None:
        """Remove the staging folder and whatever is still in it."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    def __enter__(self) -> ResultSet:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.discard()
