"""The accuracy parser on hand-made LoadGen logs, and the comparison with the float model."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from harness.loadgen.accuracy import AccuracyLogError, AccuracyResult, compare, read_predictions, score


def entry(seq: int, index: int, label: float) -> dict:
    return {"seq_id": seq, "qsl_idx": index, "data": struct.pack("<f", label).hex().upper()}


def write_log(path: Path, entries: list[dict]) -> Path:
    path.write_text(json.dumps(entries))
    return path


def test_mlperf_line_from_a_hand_made_log(tmp_path: Path) -> None:
    # five samples, answered out of order; sample 3 is logged twice with the same answer
    log = write_log(tmp_path / "mlperf_log_accuracy.json", [
        entry(0, 4, 7), entry(1, 0, 1), entry(2, 3, 2), entry(3, 1, 5), entry(4, 2, 9), entry(5, 3, 2)])
    labels = np.array([1, 5, 0, 2, 3])
    result = score(read_predictions(log), labels, log)
    assert result == AccuracyResult(good=3, total=5)
    assert result.mlperf_line() == "accuracy=60.000%, good=3, total=5"


def test_comparison_with_float_and_target_ratio() -> None:
    report = compare(AccuracyResult(good=825, total=1000), reference_top1=0.834, target_ratio=0.99)
    assert report["ratio"] == pytest.approx(0.825 / 0.834)
    assert report["meets_target"] is False  # 0.825 < 0.99 * 0.834 = 0.82566
    assert compare(AccuracyResult(826, 1000), 0.834, 0.99)["meets_target"] is True
    assert "ratio" not in compare(AccuracyResult(826, 1000), None, 0.99)


@pytest.mark.parametrize(("content", "message"), [
    ("[", "not valid JSON"),
    ('{"a": 1}', "expected a list"),
    ("[]", "no responses logged"),
    ('[{"seq_id": 0, "qsl_idx": 1}]', "response 0 lacks a valid qsl_idx or hex data"),
    ('[{"seq_id": 0, "qsl_idx": 1, "data": "0000"}]', "holds 2 bytes"),
])
def test_malformed_logs_are_named(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "mlperf_log_accuracy.json"
    path.write_text(content)
    with pytest.raises(AccuracyLogError, match=message) as info:
        read_predictions(path)
    assert str(path) in str(info.value)


def test_conflicting_duplicates_and_unknown_samples_are_errors(tmp_path: Path) -> None:
    log = write_log(tmp_path / "a.json", [entry(0, 1, 3), entry(1, 1, 4)])
    with pytest.raises(AccuracyLogError, match="sample 1 was answered with two different labels"):
        read_predictions(log)
    log = write_log(tmp_path / "b.json", [entry(0, 9, 3)])
    with pytest.raises(AccuracyLogError, match="sample index 9 is outside the 2 labelled images"):
        score(read_predictions(log), np.array([0, 1]), log)
    with pytest.raises(AccuracyLogError, match="accuracy log not found"):
        read_predictions(tmp_path / "missing.json")
