"""Top-1 accuracy from LoadGen's ``mlperf_log_accuracy.json``, reported as MLPerf's ImageNet script does."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workload.errors import HarnessError


class AccuracyLogError(HarnessError):
    """The accuracy log is missing, malformed or inconsistent with the labels."""


@dataclass(frozen=True)
class AccuracyResult:
    good: int
    total: int

    @property
    def top1(self) -> float:
        return self.good / self.total

    def mlperf_line(self) -> str:
        return f"accuracy={100.0 * self.top1:.3f}%, good={self.good}, total={self.total}"


def read_predictions(path: Path) -> dict[int, int]:
    """``qsl_idx -> predicted label`` from the float32 each response carries. Duplicates must agree."""
    if not path.is_file():
        raise AccuracyLogError(f"{path}: accuracy log not found")
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise AccuracyLogError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err
    if not isinstance(entries, list):
        raise AccuracyLogError(f"{path}: expected a list of responses")
    predictions: dict[int, int] = {}
    for number, entry in enumerate(entries):
        try:
            index = int(entry["qsl_idx"])
            data = bytes.fromhex(entry["data"])
        except (KeyError, TypeError, ValueError) as err:
            raise AccuracyLogError(f"{path}: response {number} lacks a valid qsl_idx or hex data") from err
        if len(data) != 4:
            raise AccuracyLogError(f"{path}: response {number} holds {len(data)} bytes, expected one float32")
        label = int(np.frombuffer(data, np.float32)[0])
        if predictions.setdefault(index, label) != label:
            raise AccuracyLogError(f"{path}: sample {index} was answered with two different labels")
    if not predictions:
        raise AccuracyLogError(f"{path}: no responses logged (was the run in accuracy mode?)")
    return predictions


def score(predictions: dict[int, int], labels: np.ndarray, source: Path) -> AccuracyResult:
    bad = [i for i in predictions if not 0 <= i < len(labels)]
    if bad:
        raise AccuracyLogError(f"{source}: sample index {bad[0]} is outside the {len(labels)} labelled images")
    good = sum(int(labels[i] == label) for i, label in predictions.items())
    return AccuracyResult(good, len(predictions))


def compare(result: AccuracyResult, reference_top1: float | None, target_ratio: float) -> dict[str, object]:
    """The run's top-1 against the float model's, and whether it keeps ``target_ratio`` of it."""
    report: dict[str, object] = {"top1": result.top1, "good": result.good, "total": result.total,
                                 "target_ratio": target_ratio, "reference_top1": reference_top1}
    if reference_top1:
        report["ratio"] = result.top1 / reference_top1
        report["meets_target"] = result.top1 >= target_ratio * reference_top1
    return report
