"""``documentation/calibration.md``: how each workload was calibrated, from its YAML and its calibration report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calibration.stats.ranges import RANGE_TEXT
from calibration.steps.techniques import TECHNIQUES
from harness.submission.config import SubmissionError
from workload.config import WorkloadConfig
from workload.result_set import read_finished


@dataclass(frozen=True)
class CalibratedWorkload:
    config: WorkloadConfig
    report: dict[str, Any] | None  # calibration_report.json, or None when the workload was never calibrated
    report_path: Path


def read_report(path: Path) -> dict[str, Any] | None:
    """A finished calibration report (its files unchanged since), or None: never calibrated, or interrupted."""
    if not path.is_file():
        return None
    try:
        json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SubmissionError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err
    report = read_finished(path.parent, path.name)
    if report is None:
        return None
    if not isinstance(report.get("calibration"), dict) or not isinstance(report.get("evaluation"), dict):
        raise SubmissionError(f"{path}: lacks the 'calibration' and 'evaluation' sections")
    return report


def _calibration_list(config: WorkloadConfig, images: int | None) -> str:
    count = f"{images} images" if images is not None else "size unknown until calibrated"
    listed = config.dataset.calibration_list
    if listed:
        official = " (MLPerf's official calibration list)" if "mlperf-calibration" in listed else ""
        return f"`{listed}`{official}, {count}"
    return (f"the images at even positions of the sorted file list of `{config.dataset.images}`, {count} "
            "(not an MLPerf official list: the sample dataset does not hold those images)")


def _technique(step: Any) -> str:
    name, _, option = str(step).partition(":")
    technique = TECHNIQUES.get(name)
    text = technique.text if technique else name
    return f"{text} ({option})" if option else text


def workload_section(item: CalibratedWorkload) -> str:
    config, report = item.config, item.report
    cal = report["calibration"] if report else None
    # The steps the report says ran (what `auto` chose, too); the YAML's list before any calibration.
    techniques = [s["step"] for s in report["steps"]] if report and report.get("steps") else (
        cal["techniques"] if cal else [str(t) for t in config.calibration.techniques])
    weights = cal["weights"] if cal else config.calibration.weights
    range_method = cal["range"] if cal else config.calibration.range
    lines = [f"## {config.name}", "", config.description or "", "",
             f"- Workload file: `workloads/{Path(config.source_path).name}`",
             "- Techniques, in the order applied:"]
    lines += [f"  {i}. `{step}`: {_technique(step)}" for i, step in enumerate(techniques, 1)]
    if cal and cal["techniques"] == ["auto"]:
        lines.append("  (chosen by the `auto` technique search, scored on the calibration images only)")
    range_text = RANGE_TEXT.get(range_method, range_method)
    if range_method == "percentile":
        range_text += f" ({cal['percentile'] if cal else config.calibration.percentile})"
    lines += [
        f"- Activation range method: `{range_method}`: {range_text}; activations are uint8 (asymmetric).",
        f"- Weights: int8 symmetric, {weights.replace('-', ' ')}"
        f"{' (one scale per output channel, axis 0)' if weights == 'per-channel' else ' (one scale per tensor)'};"
        " biases int32 with scale = input scale x weight scale.",
        f"- Calibration list: {_calibration_list(config, report.get('calibration_images') if report else None)}.",
    ]
    if report:
        ev = report["evaluation"]
        lines += [
            f"- Measured on {ev.get('images', '?')} images of `{config.dataset.images}`: "
            f"float top-1 {100 * ev['float_top1']:.2f}%, int8 top-1 {100 * ev['int8_top1']:.2f}% "
            f"({100 * ev['int8_top1'] / ev['float_top1']:.2f}% of float; the workload's target is "
            f"{100 * config.accuracy.target_ratio:.1f}%).",
            f"- Source: `{item.report_path}`.",
        ]
    else:
        lines.append(f"- Not calibrated on this machine: `{item.report_path}` does not exist, so no accuracy "
                     "was measured.")
    return "\n".join(lines) + "\n"


def calibration_markdown(submitter: str, items: list[CalibratedWorkload]) -> str:
    head = (f"# {submitter}: int8 calibration\n\n"
            "Post-training quantization only: no retraining and no fine-tuning. Every model is calibrated by this "
            "repository's pipeline (`calibration/quantize.py`, snapshot under `src/`), which writes an ONNX model "
            "with QuantizeLinear/DequantizeLinear pairs that ONNX Runtime runs with int8 kernels.\n\n"
            "Accuracy figures below are measured on the images named, which for the sample dataset are 1000 "
            "ImageNet images, not the 50,000-image validation set: they are not MLPerf accuracy results.\n\n")
    return head + "\n".join(workload_section(item) for item in items)
