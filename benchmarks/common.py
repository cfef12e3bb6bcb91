"""What the accuracy benchmarks share: a workload's float model and images (in memory, or laid out for the
peers), the fidelity figures of a model's logits, and the merge of a run's rows into a results file."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from calibration.evaluate import accuracy, sqnr_db, top1_agreement
from calibration.graph.io import save_model
from calibration.source.importer import import_float_model
from harness.sample_data import fill_sample_images
from workload.config import WorkloadConfig, load_workload
from workload.dataset import Dataset
from workload.errors import HarnessError
from workload.files import save_array
from workload.inputs import load_workload_data


@dataclass(frozen=True)
class WorkloadData:
    config: WorkloadConfig
    float_model: onnx.ModelProto
    dataset: Dataset
    calibration: np.ndarray
    evaluation: np.ndarray


def load_workload_inputs(root: Path, name: str) -> WorkloadData:
    """Workload ``name``'s config, imported float model, and calibration and evaluation tensors."""
    config = load_workload(root / "workloads" / f"{name}.yaml")
    float_model = import_float_model(config.model, root / "build" / "wheels", root, config.preprocessing.crop)
    dataset, calibration, evaluation = load_workload_data(config, root, show_progress=False)
    return WorkloadData(config, float_model, dataset, calibration, evaluation)


def merged_rows(previous: list[dict], new: list[dict], workload: str, weights: str) -> list[dict]:
    """``previous`` without the entries of this workload and weight setting, followed by ``new``."""
    return [r for r in previous if (r.get("workload"), r.get("weights")) != (workload, weights)] + new


@dataclass(frozen=True)
class BenchInputs:
    config: WorkloadConfig
    dataset: Dataset
    fp32: Path  # the float model, as every tool receives it
    calibration: Path  # .npy of the calibration tensors, as every tool receives them
    calibration_count: int
    evaluation: np.ndarray  # in memory: the same tensors are evaluated many times


def prepare_inputs(root: Path, name: str, work: Path) -> BenchInputs:
    """Write workload ``name``'s float model and calibration tensors under ``work`` for the tools to read."""
    data = load_workload_inputs(root, name)
    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "model.fp32.onnx"
    save_model(data.float_model, fp32)
    save_array(work / "calibration.npy", data.calibration)
    return BenchInputs(data.config, data.dataset, fp32, work / "calibration.npy", len(data.calibration),
                       np.asarray(data.evaluation))


def fidelity(logits: np.ndarray, labels: np.ndarray, label_offset: int,
             float_logits: np.ndarray | None) -> dict[str, float]:
    """Top-1/top-5, and agreement and SQNR against the float model's logits when given."""
    acc = accuracy(logits, labels, label_offset)
    figures = {"top1": acc.top1, "top5": acc.top5}
    if float_logits is not None:
        figures["agreement"] = top1_agreement(float_logits, logits)
        figures["sqnr_db"] = sqnr_db(float_logits, logits)
    return figures


def run_main(main: Callable[[], int | None]) -> int:
    """Run a benchmark's ``main``: a user-fixable problem (unknown workload or technique, missing images, a
    model that cannot be calibrated) ends as one ``error:`` line and status 2, as in the harness CLI."""
    try:
        return main() or 0
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def start_benchmark(root: Path) -> None:
    """Timestamped logging, and ``data/imagenet-samples`` filled (from ``IMAGENET_SAMPLES_DIR`` when it is set)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    samples = os.environ.get("IMAGENET_SAMPLES_DIR", "").strip()
    fill_sample_images(root / "data" / "imagenet-samples", Path(samples) if samples else None)
