"""``make calibrate`` and ``make run``: calibrate (with the HTP evaluation when the backend is qnn-htp), make sure
the model exists (calibrating if needed), then run LoadGen per mode on the chosen backend."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from calibration.pipeline import REPORT, CalibrationSummary, calibrate
from harness.loadgen.backend import Backend, OnnxRuntimeBackend
from harness.loadgen.runner import RunSpec, run_scenario
from harness.loadgen.scenarios import EMULATOR_SMOKE, parse_mode, parse_profile, parse_scenario
from workload.config import WorkloadConfig
from workload.errors import HarnessError
from workload.inputs import load_workload_data
from workload.paths import build_dir, results_root
from workload.result_set import read_finished

log = logging.getLogger(__name__)

Precision = Literal["int8", "fp32"]
EMULATOR_SMOKE_SAMPLES = 64  # accuracy runs of the smoke profile on the HTP emulator: the first 64 images


def calibrate_workload(config: WorkloadConfig, root: Path, eval_limit: int | None = None, show_progress: bool = True
                       ) -> tuple[CalibrationSummary, Any]:
    """The calibrate command; with ``harness.backend: qnn-htp`` also the HTP form, context model and HTP figures
    (returned second, else None)."""
    from harness.htp_target import HtpTarget

    if config.harness.backend != "qnn-htp":  # an earlier HTP calibration's files go when this result is published
        return calibrate(config, root, show_progress), None

    target = HtpTarget(config.harness.qnn, eval_limit, show_progress)
    return calibrate(config, root, show_progress, targets=[target]), target.result


def finished_report(config: WorkloadConfig, root: Path) -> dict[str, Any] | None:
    """build/<name>/'s calibration report, only when finished and its model, encodings and plots are unchanged."""
    return read_finished(build_dir(root, config.name), REPORT)


def calibration_reference(config: WorkloadConfig, root: Path) -> dict[str, float]:
    """Float and int8 top-1 as the calibrate command measured them (from the finished calibration_report.json)."""
    evaluation = (finished_report(config, root) or {}).get("evaluation", {})
    return {k: float(evaluation[k]) for k in ("float_top1", "int8_top1") if k in evaluation}


def htp_reference(config: WorkloadConfig, root: Path, images: int) -> dict[str, float]:
    """Float and HTP int8 top-1 on the first ``images`` images, when the HTP evaluation used exactly those."""
    htp = (finished_report(config, root) or {}).get("htp", {})
    if htp.get("images") != images:
        return {}
    return {"float_top1": htp["figures"]["float_top1"], "int8_top1": htp["figures"]["htp_int8_top1"]}


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


def has_htp_section(config: WorkloadConfig, root: Path) -> bool:
    """Whether the finished calibration holds an HTP evaluation, with its context model, for the workload's
    current QNN options."""
    report = finished_report(config, root) or {}
    return ("model.int8.qnn_ctx.onnx" in report.get("files", {})
            and report.get("htp", {}).get("qnn") == dataclasses.asdict(config.harness.qnn))


def ensure_model(config: WorkloadConfig, root: Path, precision: Precision, eval_limit: int | None = None) -> Path:
    """The model to run; calibrates first when it is missing or was built with other calibration settings.
    On the HTP it is the EPContext model (what a device loads), built with the workload's QNN options."""
    htp = config.harness.backend == "qnn-htp"
    name = "model.int8.qnn_ctx.onnx" if htp else f"model.{precision}.onnx"
    path = build_dir(root, config.name) / name
    if not calibrated_with(config, root, precision) or (htp and not has_htp_section(config, root)):
        log.info("%s is missing or stale: calibrating %s first", path, config.name)
        summary, _ = calibrate_workload(config, root, eval_limit)
        if not htp:
            path = summary.int8_model if precision == "int8" else summary.fp32_model
    return path


def backend_factory(config: WorkloadConfig, model_path: Path) -> Callable[[], Backend]:
    if config.harness.backend == "qnn-htp":
        from harness.loadgen.qnn import QnnHtpBackend

        return functools.partial(QnnHtpBackend, model_path, config.harness, config.model.output_name)
    return functools.partial(OnnxRuntimeBackend, model_path, config.harness, config.model.output_name)


def run_workload(config: WorkloadConfig, root: Path, scenario: str, mode: str, profile: str,
                 precision: Precision = "int8", eval_limit: int | None = None) -> list[dict[str, Any]]:
    """Run ``scenario`` in each requested mode; results go under ``root/results``.

    On the HTP emulator the results go under the QNN system name, the smoke profile runs fewer queries
    (``smoke-emulator``) and the first ``eval_limit`` images (64 in the smoke profile), and every summary says
    that the latency is the emulator's."""
    scenario = parse_scenario(scenario)
    modes = parse_mode(mode)
    duration = parse_profile(profile)
    if precision not in ("int8", "fp32"):
        raise HarnessError(f"unknown precision '{precision}' (known: int8, fp32)")
    htp = config.harness.backend == "qnn-htp"
    if htp and precision != "int8":
        raise HarnessError("the qnn-htp backend runs the int8 model only (use --precision int8)")
    harness, note, sample_count = config.harness, "", None
    if htp:
        from harness.loadgen.qnn import EMULATOR_NOTE

        harness = dataclasses.replace(config.harness, system=config.harness.qnn.system,
                                      providers=("QNNExecutionProvider",))
        note = EMULATOR_NOTE
        duration = EMULATOR_SMOKE if duration.name == "smoke" else duration
        sample_count = eval_limit or (EMULATOR_SMOKE_SAMPLES if duration is EMULATOR_SMOKE else None)
    model_path = ensure_model(config, root, precision, sample_count)
    dataset, _, evaluation = load_workload_data(config, root)
    if htp:  # the reference figures must be on the same images as the run
        reference = htp_reference(config, root, sample_count or len(dataset.labels))
    else:
        reference = calibration_reference(config, root)
    factory = backend_factory(config, model_path)
    summaries = []
    for each in modes:
        spec = RunSpec(
            workload=config.name if precision == "int8" else f"{config.name}-fp32",
            scenario=scenario, mode=each, profile=duration, harness=harness, sample_count=sample_count, note=note,
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
        text = f"{head} {acc['mlperf_line']}" + (f" [{summary['note']}]" if summary.get("note") else "")
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
    tail = f" [{summary['note']}]" if summary.get("note") else ""
    return f"{head} {', '.join(figures)}{tail}"
