"""``make run``: make sure the model exists (calibrating if needed), then run LoadGen per mode."""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any, Literal

from calibration.pipeline import REPORT, calibrate
from harness.loadgen.backend import OnnxRuntimeBackend
from harness.loadgen.runner import RunSpec, run_scenario
from harness.loadgen.scenarios import parse_mode, parse_profile, parse_scenario
from workload.config import WorkloadConfig
from workload.errors import HarnessError
from workload.inputs import load_workload_data
from workload.paths import build_dir, results_root
from workload.result_set import read_finished

log = logging.getLogger(__name__)

Precision = Literal["int8", "fp32"]


def finished_report(config: WorkloadConfig, root: Path) -> dict[str, Any] | None:
    """build/<name>/'s calibration report, only when finished and its model, encodings and plots are unchanged."""
    return read_finished(build_dir(root, config.name), REPORT)


def calibration_reference(config: WorkloadConfig, root: Path) -> dict[str, float]:
    """Float and int8 top-1 as the calibrate command measured them (from the finished calibration_report.json)."""
    evaluation = (finished_report(config, root) or {}).get("evaluation", {})
    return {k: float(evaluation[k]) for k in ("float_top1", "int8_top1") if k in evaluation}


def calibrated_with(config: WorkloadConfig, root: Path, precision: Precision = "int8") -> bool:
    """Whether build/<name>/ holds a finished calibration with the workload's current settings, whose files
    (the ``precision`` model among them) still have the hashes its report recorded."""
    report = finished_report(config, root)
    if report is None or f"model.{precision}.onnx" not in report.get("files", {}):
        return False
    wanted = {**dataclasses.asdict(config.calibration),
              "techniques": [str(step) for step in config.calibration.techniques]}
    recorded = report.get("calibration", {})
    return all(recorded.get(k) == v for k, v in wanted.items() if k != "batch_size")  # batch size: speed only


def ensure_model(config: WorkloadConfig, root: Path, precision: Precision) -> Path:
    """The model to run; calibrates first when it is missing or was built with other calibration settings."""
    path = build_dir(root, config.name) / f"model.{precision}.onnx"
    if not calibrated_with(config, root, precision):
        log.info("%s is missing or stale: calibrating %s first", path, config.name)
        summary = calibrate(config, root)
        path = summary.int8_model if precision == "int8" else summary.fp32_model
    return path


def run_workload(config: WorkloadConfig, root: Path, scenario: str, mode: str, profile: str,
                 precision: Precision = "int8") -> list[dict[str, Any]]:
    """Run ``scenario`` in each requested mode; results go under ``root/results``."""
    scenario = parse_scenario(scenario)
    modes = parse_mode(mode)
    duration = parse_profile(profile)
    if precision not in ("int8", "fp32"):
        raise HarnessError(f"unknown precision '{precision}' (known: int8, fp32)")
    model_path = ensure_model(config, root, precision)
    dataset, _, evaluation = load_workload_data(config, root)
    reference = calibration_reference(config, root)
    factory = functools.partial(OnnxRuntimeBackend, model_path, config.harness, config.model.output_name)
    summaries = []
    for each in modes:
        spec = RunSpec(
            workload=config.name if precision == "int8" else f"{config.name}-fp32",
            scenario=scenario, mode=each, profile=duration, harness=config.harness,
            tensors_path=Path(evaluation.filename), labels=dataset.labels, label_offset=config.model.label_offset,
            backend_factory=factory, results_root=results_root(root), model=str(model_path.relative_to(root)),
            reference_top1=reference.get("float_top1"), target_ratio=config.accuracy.target_ratio,
            calibration_top1=reference.get(f"{precision}_top1" if precision == "int8" else "float_top1"))
        summaries.append(run_scenario(spec))
    return summaries


def describe(summary: dict[str, Any]) -> str:
    """One line per run for the terminal."""
    head = f"{summary['workload']} {summary['scenario']} {summary['mode']}:"
    if summary["mode"] == "accuracy":
        acc = summary["accuracy"]
        text = f"{head} {acc['mlperf_line']}"
        if acc.get("reference_top1"):
            verdict = "meets" if acc["meets_target"] else "MISSES"
            text += (f" ({100 * acc['ratio']:.2f}% of float top-1 {100 * acc['reference_top1']:.2f}%, "
                     f"{verdict} the {100 * acc['target_ratio']:.0f}% target)")
        return text
    perf = summary["performance"]
    figures = [f"{perf['validity']}"]
    if "samples_per_s" in perf:
        figures.append(f"{perf['samples_per_s']:.1f} samples/s")
    figures.append(f"p90 {perf['p90_ms']:.2f} ms, p99 {perf['p99_ms']:.2f} ms")
    return f"{head} {', '.join(figures)}"
