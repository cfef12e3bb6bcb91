"""Runs a checked technique list in order, recording each step's time and float drift, and writes the
QDQ model from the state the steps leave."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from calibration.evaluate import relative_change
from calibration.graph.session import make_session, run_batches
from calibration.quant.encodings import Encoding
from calibration.quant.writer import write_qdq_model
from calibration.steps.state import PipelineState, StepContext
from calibration.steps.techniques import CHANNEL_STATS, TECHNIQUES, check_techniques
from workload.config import TechniqueStep
from workload.errors import CalibrationError

log = logging.getLogger(__name__)

DRIFT_PROBE_IMAGES = 16
# The probe's unoptimized float session holds a batch's activations: 16 at once set Lite0's peak.
DRIFT_PROBE_BATCH = 4


@dataclass
class PrefixCache:
    """The state after each step prefix, for runs from one float model on the same images (the ``auto``
    search): a candidate that shares a prefix (fold, CLE variant, profile) with an earlier one starts from
    a branch of that prefix's state instead of running it again. The states hold their models."""

    states: dict[tuple[str, ...], tuple[PipelineState, float, onnx.ModelProto]] = field(default_factory=dict)
    reference: np.ndarray | None = None  # the float model's logits on the drift probe's images

    def longest(self, steps: tuple[TechniqueStep, ...]) -> tuple[int, tuple[PipelineState, float, onnx.ModelProto]
                                                                   | None]:
        for done in range(len(steps), 0, -1):
            entry = self.states.get(tuple(str(s) for s in steps[:done]))
            if entry is not None:
                return done, entry
        return 0, None


def run_steps(model: onnx.ModelProto, ctx: StepContext, cache: PrefixCache | None = None) -> PipelineState:
    """Apply the configured steps in order, recording each one's float drift and time (a step taken from
    ``cache`` keeps the time it took when it ran)."""
    steps = ctx.config.calibration.techniques
    check_techniques(steps)
    probe = np.ascontiguousarray(ctx.calibration_images[:DRIFT_PROBE_IMAGES])
    reference = cache.reference if cache is not None else None
    if reference is None:
        reference = run_batches(make_session(model), probe, DRIFT_PROBE_BATCH)
        if cache is not None:
            cache.reference = reference
    profile_at = [s.name for s in steps].index("profile")
    done, cached = cache.longest(steps) if cache is not None else (0, None)
    if cached is not None:
        state, drift, measured = cached[0].branch(), cached[1], cached[2]
    else:
        state, drift, measured = PipelineState(model=model), 0.0, model
        state.report["steps"] = []
    for i, step in enumerate(steps[done:], start=done):
        log.info("step %s", step)
        start = time.perf_counter()
        adapter = TECHNIQUES[step.name].adapter
        if adapter is None:
            raise CalibrationError(f"'{step}' is not a step: the quantize entry point runs it")
        adapter(state, ctx, step.option)
        seconds = time.perf_counter() - start
        if state.model is not measured:  # steps that leave the float model alone (profile) keep its drift
            logits = run_batches(make_session(state.model), probe, DRIFT_PROBE_BATCH)
            drift, measured = relative_change(reference, logits), state.model
        state.report["steps"].append({"step": str(step), "seconds": round(seconds, 3), "float_drift": drift})
        if cache is not None and i <= profile_at:  # the steps after profile are each candidate's own
            cache.states[tuple(str(s) for s in steps[: i + 1])] = (state.branch(), drift, measured)
        if cache is None and i == profile_at:  # no other candidate will read the per-image channel statistics
            state.shared.pop(CHANNEL_STATS, None)
    return state


def write_int8(state: PipelineState, per_channel: bool) -> tuple[onnx.ModelProto, dict[str, Encoding]]:
    """The QDQ model and its parameter encodings, from the steps' model, plan and activation encodings."""
    if state.plan is None:
        raise CalibrationError("no activation encodings: the technique list has no 'profile' step")
    return write_qdq_model(state.model, state.plan, state.activations, per_channel)


