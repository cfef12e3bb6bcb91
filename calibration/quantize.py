"""The one entry point from a float model to an int8 QDQ model: the workload's technique steps, or the
``auto`` search, then the QDQ writer. The calibrate command, the benchmarks and the peers' wrapper call it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from calibration.quant.encodings import Encoding
from calibration.steps.runner import run_steps, write_int8
from calibration.steps.search import SearchResult, search_techniques
from calibration.steps.state import PipelineState, StepContext
from calibration.steps.techniques import check_techniques, is_auto
from workload.config import WorkloadConfig


@dataclass
class Quantized:
    state: PipelineState  # the steps' final model, encodings and report
    model: onnx.ModelProto  # the int8 QDQ model
    params: dict[str, Encoding]  # the weight and bias encodings it uses
    search: SearchResult | None = None  # set when the list was 'auto'


def quantize(model: onnx.ModelProto, config: WorkloadConfig, calibration_images: np.ndarray,
             show_progress: bool = True) -> Quantized:
    """Calibrate ``model`` (never edited) on ``calibration_images`` as ``config.calibration`` says."""
    check_techniques(config.calibration.techniques)
    ctx = StepContext(config, calibration_images, show_progress)
    search = None
    if is_auto(config.calibration.techniques):
        search = search_techniques(model, ctx)
        state = search.state
        state.report["technique_search"] = search.report()
    else:
        state = run_steps(model, ctx)
    int8_model, params = write_int8(state, config.calibration.per_channel)
    return Quantized(state, int8_model, params, search)
