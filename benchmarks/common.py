"""What the accuracy benchmarks share: a workload's float model and images laid out for the peers, and the
fidelity figures of a model's logits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calibration.evaluate import accuracy, sqnr_db, top1_agreement
from calibration.files import save_array
from calibration.graph import save_model
from calibration.model_source import import_float_model
from calibration.pipeline import load_workload_data
from harness.config import WorkloadConfig, load_workload
from harness.dataset import Dataset


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
    config = load_workload(root / "workloads" / f"{name}.yaml")
    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "model.fp32.onnx"
    save_model(import_float_model(config.model, root / "build" / "wheels", root), fp32)
    dataset, calibration, evaluation = load_workload_data(config, root, show_progress=False)
    save_array(work / "calibration.npy", calibration)
    return BenchInputs(config, dataset, fp32, work / "calibration.npy", len(calibration), np.asarray(evaluation))


def fidelity(logits: np.ndarray, labels: np.ndarray, label_offset: int,
             float_logits: np.ndarray | None) -> dict[str, float]:
    """Top-1/top-5, and agreement and SQNR against the float model's logits when given."""
    acc = accuracy(logits, labels, label_offset)
    figures = {"top1": acc.top1, "top5": acc.top5}
    if float_logits is not None:
        figures["agreement"] = top1_agreement(float_logits, logits)
        figures["sqnr_db"] = sqnr_db(float_logits, logits)
    return figures
