"""The calibrate command: import, quantize, write and evaluate one workload."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calibration.evaluate import Accuracy, accuracy, sqnr_db, top1_agreement
from calibration.graph.io import save_model
from calibration.graph.session import make_session, run_batches
from calibration.plots import plot_cle_weight_ranges
from calibration.quant.aimet import export_aimet_encodings
from calibration.quantize import quantize
from calibration.source.importer import import_float_model
from calibration.steps.search import plot_scores
from workload.config import WorkloadConfig
from workload.inputs import load_workload_data
from workload.paths import build_dir, wheel_cache
from workload.result_set import ResultSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationSummary:
    workload: str
    fp32_model: Path
    int8_model: Path
    encodings: Path
    report: Path
    float_top1: float
    float_top5: float
    int8_top1: float
    int8_top5: float
    agreement: float
    sqnr_db: float
    images: int
    agreement_calibration: float = float("nan")  # on the evaluation images that are also calibration images
    agreement_held_out: float = float("nan")  # on the others: what calibration (and bias correction) never saw


REPORT = "calibration_report.json"


@dataclass(frozen=True)
class Evaluated:
    """What one calibration wrote and measured, handed to the caller's evaluations on other targets."""

    out: Path  # the folder the calibration's files are published to
    stage: Callable[[str], Path]  # where to write a further file of this result (published with it, or not at all)
    int8_model: Path  # as staged
    encodings: Path  # as staged
    images: np.ndarray  # the evaluation images, in dataset order
    labels: np.ndarray
    label_offset: int
    float_logits: np.ndarray
    int8_logits: np.ndarray


# An evaluation on another target (the QNN HTP, from harness/): it writes its files through ``stage`` and returns
# the sections it adds to calibration_report.json. Passed in, so that this command never imports the harness.
TargetEvaluation = Callable[[Evaluated], dict[str, Any]]


def calibrate(config: WorkloadConfig, root: Path, show_progress: bool = True,
              targets: Sequence[TargetEvaluation] = ()) -> CalibrationSummary:
    """Import, transform, profile, quantize and evaluate one workload (and on each of ``targets``); writes
    build/<name>/.

    Every file of the calibration is staged and published together with the report, last (``ResultSet``): an
    interrupted or failed run leaves the previous finished result as it was, or no finished result at all.
    """
    out = build_dir(root, config.name)
    with ResultSet(out, REPORT) as result_set:
        return _calibrate(config, root, out, result_set, show_progress, targets)


def _calibrate(config: WorkloadConfig, root: Path, out: Path, result_set: ResultSet, show_progress: bool,
               targets: Sequence[TargetEvaluation]) -> CalibrationSummary:
    log.info("[1/5] importing the float model")
    float_model = import_float_model(config.model, wheel_cache(root), root, config.preprocessing.crop)
    save_model(float_model, result_set.stage("model.fp32.onnx"))

    log.info("[2/5] loading images")
    dataset, calibration_images, evaluation_images = load_workload_data(config, root, show_progress)

    log.info("[3/5] calibrating on %d images: %s", len(calibration_images),
             ", ".join(str(s) for s in config.calibration.techniques))
    start = time.perf_counter()
    result = quantize(float_model, config, calibration_images, show_progress)
    state, int8_model, params = result.state, result.model, result.params
    calibration_seconds = time.perf_counter() - start
    if result.search is not None:
        plot_scores(result.search.scores, result_set.stage("plots/technique_search.png"),
                    f"{config.name}, {config.calibration.weights}: auto search on the calibration images")

    log.info("[4/5] writing the int8 model and encodings")
    int8_path = result_set.stage("model.int8.onnx")
    save_model(int8_model, int8_path)
    encodings_path = result_set.stage("encodings.json")
    export_aimet_encodings({**state.activations, **state.outputs}, params, encodings_path)

    log.info("[5/5] evaluating float and int8 on %d images", len(evaluation_images))
    float_logits = run_batches(make_session(float_model, optimize=True), evaluation_images)
    int8_logits = run_batches(make_session(int8_model, optimize=True), evaluation_images)
    labels = dataset.labels
    float_acc: Accuracy = accuracy(float_logits, labels, config.model.label_offset)
    int8_acc: Accuracy = accuracy(int8_logits, labels, config.model.label_offset)
    summary = CalibrationSummary(
        workload=config.name, fp32_model=out / "model.fp32.onnx", int8_model=out / "model.int8.onnx",
        encodings=out / "encodings.json", report=out / REPORT, float_top1=float_acc.top1, float_top5=float_acc.top5,
        int8_top1=int8_acc.top1, int8_top5=int8_acc.top5, agreement=top1_agreement(float_logits, int8_logits),
        sqnr_db=sqnr_db(float_logits, int8_logits), images=len(evaluation_images),
        **held_out_agreement(float_logits, int8_logits, np.isin(dataset.names, dataset.calibration_names)),
    )
    report = {
        "workload": config.name,
        "calibration": {**dataclasses.asdict(config.calibration),
                        "techniques": [str(s) for s in config.calibration.techniques]},
        "calibration_images": len(calibration_images),
        "calibration_seconds": round(calibration_seconds, 3),
        **state.report,
        "evaluation": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(summary).items()},
    }
    depthwise_ranges = state.report.get("cle", {}).get("depthwise_ranges")
    if depthwise_ranges:
        plot_cle_weight_ranges(depthwise_ranges, result_set.stage("plots/cle_weight_ranges.png"))
    evaluated = Evaluated(out, result_set.stage, int8_path, encodings_path, evaluation_images, labels,
                          config.model.label_offset, float_logits, int8_logits)
    for target in targets:
        report.update(target(evaluated))
    result_set.publish(report)
    return summary


def held_out_agreement(float_logits: np.ndarray, int8_logits: np.ndarray, in_calibration: np.ndarray
                       ) -> dict[str, float]:
    """Top-1 agreement split into calibration and held-out images (NaN for an empty part)."""
    parts = {"agreement_calibration": in_calibration, "agreement_held_out": ~in_calibration}
    return {key: top1_agreement(float_logits[mask], int8_logits[mask]) if mask.any() else float("nan")
            for key, mask in parts.items()}


def format_summary(s: CalibrationSummary) -> str:
    return "\n".join([
        f"{s.workload}: {s.images} evaluation images",
        f"  float  top-1 {100 * s.float_top1:6.2f} %   top-5 {100 * s.float_top5:6.2f} %",
        f"  int8   top-1 {100 * s.int8_top1:6.2f} %   top-5 {100 * s.int8_top5:6.2f} %",
        f"  top-1 agreement with float {100 * s.agreement:6.2f} %   logit SQNR {s.sqnr_db:5.1f} dB",
        f"  agreement on calibration images {100 * s.agreement_calibration:6.2f} %   "
        f"held out {100 * s.agreement_held_out:6.2f} %",
        f"  wrote {s.int8_model}, {s.encodings.name}, {s.report.name}",
    ])
