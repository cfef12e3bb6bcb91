"""Runs a checked technique list in order, recording each step's time and float drift, and writes the
QDQ model from the state the steps leave."""

from __future__ import annotations

import logging
import time

import numpy as np
import onnx

from calibration.evaluate import relative_change
from calibration.graph.session import make_session, run_batches
from calibration.quant.encodings import Encoding
from calibration.quant.writer import write_qdq_model
from calibration.steps.state import PipelineState, StepContext
from calibration.steps.techniques import TECHNIQUES, check_techniques
from workload.errors import CalibrationError

log = logging.getLogger(__name__)

DRIFT_PROBE_IMAGES = 16


def run_steps(model: onnx.ModelProto, ctx: StepContext) -> PipelineState:
    """Apply the configured steps in order, recording each one's float drift and time."""
    steps = ctx.config.calibration.techniques
    check_techniques(steps)
    state = PipelineState(model=model)
    probe = np.ascontiguousarray(ctx.calibration_images[:DRIFT_PROBE_IMAGES])
    reference = run_batches(make_session(model), probe)
    state.report["steps"] = []
    drift, measured = 0.0, model
    for step in steps:
        log.info("step %s", step)
        start = time.perf_counter()
        adapter = TECHNIQUES[step.name].adapter
        if adapter is None:
            raise CalibrationError(f"'{step}' is not a step: the quantize entry point runs it")
        adapter(state, ctx, step.option)
        seconds = time.perf_counter() - start
        if state.model is not measured:  # steps that leave the float model alone (profile) keep its drift
            drift, measured = relative_change(reference, run_batches(make_session(state.model), probe)), state.model
        state.report["steps"].append({"step": str(step), "seconds": round(seconds, 3), "float_drift": drift})
    return state


def write_int8(state: PipelineState, per_channel: bool) -> tuple[onnx.ModelProto, dict[str, Encoding]]:
    """The QDQ model and its parameter encodings, from the steps' model, plan and activation encodings."""
    if state.plan is None:
        raise CalibrationError("no activation encodings: the technique list has no 'profile' step")
    return write_qdq_model(state.model, state.plan, state.activations, per_channel)


