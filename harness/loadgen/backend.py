"""Inference backends: the ``Backend`` protocol the SUT calls, and its ONNX Runtime implementation.

Providers, threads and session options come from the workload's ``harness`` section, never from the environment.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from calibration.graph.session import EXACT_INT8
from workload.config import HarnessConfig
from workload.errors import HarnessError

log = logging.getLogger(__name__)


class BackendError(HarnessError):
    """The model cannot be loaded or run (missing file, unavailable provider, failed inference)."""


class Backend(Protocol):
    """Runs a batch of preprocessed images (N, 3, H, W) and returns the model's scores (N, classes)."""

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


def session_options(cfg: HarnessConfig) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = cfg.intra_op_threads
    options.inter_op_num_threads = cfg.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry(*EXACT_INT8)  # the int8 model's own arithmetic, without int16 saturation
    return options


def check_providers(requested: tuple[str, ...]) -> list[str]:
    available = ort.get_available_providers()
    missing = [p for p in requested if p not in available]
    if missing:
        raise BackendError(f"execution provider {missing[0]} was requested in harness.providers but this "
                           f"onnxruntime build has only {', '.join(available)}")
    return list(requested)


class OnnxRuntimeBackend:
    """One ONNX Runtime session over ``model_path``; ``predict`` is safe to call from several threads."""

    def __init__(self, model_path: Path, cfg: HarnessConfig, output_name: str | None = None) -> None:
        if not model_path.is_file():
            raise BackendError(f"{model_path}: model file not found (run `make calibrate` first)")
        providers = check_providers(cfg.providers)
        try:
            self.session = ort.InferenceSession(str(model_path), session_options(cfg), providers=providers)
        except Exception as err:  # ORT raises its own exception types for corrupt or unsupported models
            raise BackendError(f"{model_path}: onnxruntime cannot load the model: {err}") from err
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        if output_name is not None and output_name not in outputs:
            raise BackendError(f"{model_path}: no output '{output_name}' (outputs: {', '.join(outputs)})")
        self.output_name = output_name or outputs[0]
        log.info("loaded %s with %s", model_path, ", ".join(self.session.get_providers()))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]
