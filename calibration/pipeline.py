"""The ordered calibration steps a workload selects, and the end-to-end ``calibrate`` command.

import float model ─► steps from the YAML (fold_bn, ..., profile, ...) ─► QDQ model + encodings
─► float vs int8 evaluation ─► calibration_report.json
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from calibration.bias_correction import correct_biases
from calibration.encodings import Encoding, activation_encoding, export_aimet_encodings
from calibration.equalize import absorb_high_biases, equalize, link_tensors, relu6_to_relu
from calibration.errors import CalibrationError
from calibration.evaluate import Accuracy, accuracy, relative_change, sqnr_db, top1_agreement
from calibration.files import write_json
from calibration.fold import FoldedBN, fold_batch_norms
from calibration.gptq import round_weights
from calibration.graph import make_session, run_batches, save_model
from calibration.model_source import import_float_model
from calibration.plots import plot_cle_weight_ranges
from calibration.profile import TensorStats, profile_activations, profile_channel_ranges
from calibration.qdq import QuantPlan, plan_quantization, write_qdq_model
from calibration.ranges import HISTOGRAM_METHODS, choose_range
from harness.config import TechniqueStep, WorkloadConfig, is_auto
from harness.dataset import Dataset, load_tensors, workload_dataset

log = logging.getLogger(__name__)

DRIFT_PROBE_IMAGES = 16


@dataclass
class PipelineState:
    """What the steps read and change. Steps replace ``model``; they never edit the caller's copy."""

    model: onnx.ModelProto
    folded: dict[str, FoldedBN] = field(default_factory=dict)
    plan: QuantPlan | None = None
    stats: dict[str, TensorStats] = field(default_factory=dict)
    activations: dict[str, Encoding] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepContext:
    config: WorkloadConfig
    calibration_images: np.ndarray
    show_progress: bool = True


Step = Callable[[PipelineState, StepContext, str | None], None]


def step_fold_bn(state: PipelineState, _ctx: StepContext, _option: str | None) -> None:
    state.model, folded, skipped = fold_batch_norms(state.model)
    state.folded.update({f.layer: f for f in folded})
    state.report["fold_bn"] = {"folded": [f.layer for f in folded], "skipped": skipped}


def step_profile(state: PipelineState, ctx: StepContext, _option: str | None) -> None:
    cal = ctx.config.calibration
    state.plan = plan_quantization(state.model)
    bins = cal.histogram_bins if cal.range in HISTOGRAM_METHODS else None
    state.stats = profile_activations(state.model, state.plan.activations, ctx.calibration_images,
                                      cal.batch_size, bins, ctx.show_progress)
    upper_bounds = {out: bound for out, bound in state.plan.fused.values()}
    state.activations = {}
    for name, stats in state.stats.items():
        low, high = choose_range(stats, cal.range, cal.percentile)
        state.activations[name] = activation_encoding(low, min(high, upper_bounds.get(name, np.inf)))
    state.report["activation_ranges"] = {
        name: {
            "min": s.minimum, "max": s.maximum, "mean_min": s.mean_min, "mean_max": s.mean_max,
            "range_min": float(state.activations[name].range_min),
            "range_max": float(state.activations[name].range_max),
            "scale": float(state.activations[name].scale), "zero_point": int(state.activations[name].zero_point),
        }
        for name, s in state.stats.items()
    }


def step_bias_correction(state: PipelineState, ctx: StepContext, option: str | None) -> None:
    if state.plan is None:
        raise CalibrationError("'bias_correction' needs activation encodings: put it after 'profile'")
    # The simulated int8 model quantizes weights only; simulating the activation QDQ as well was measured
    # and dropped (see the module docstring of calibration/bias_correction.py).
    result = correct_biases(state.model, ctx.calibration_images, ctx.config.calibration.weights == "per-channel",
                            option or "empirical", state.folded, show_progress=ctx.show_progress)
    state.model = result.model
    state.report["bias_correction"] = {"method": option or "empirical", **result.report()}


def step_gptq(state: PipelineState, ctx: StepContext, option: str | None) -> None:
    """``gptq`` rounds each layer's columns in their stored order, ``gptq:act_order`` largest input energy first."""
    cal = ctx.config.calibration
    state.model, layers = round_weights(state.model, state.activations, ctx.calibration_images,
                                        cal.weights == "per-channel", cal.batch_size, ctx.show_progress,
                                        act_order=option == "act_order")
    state.report["gptq"] = {"column_order": option or "stored", "layers": [layer.as_dict() for layer in layers]}


def step_relu6_to_relu(state: PipelineState, _ctx: StepContext, _option: str | None) -> None:
    state.model, replaced, kept = relu6_to_relu(state.model)
    state.report["relu6_to_relu"] = {"replaced": replaced, "kept": kept}


def step_cle(state: PipelineState, ctx: StepContext, option: str | None) -> None:
    """``cle`` / ``cle:exact`` keep ReLU6 exact with per-channel bounds, ``cle:skip_relu6`` leaves
    sets with a ReLU6 unscaled, ``cle:iterate`` repeats exact CLE until the scales settle,
    ``cle:activation_aware`` fits weight and activation ranges together from calibration statistics,
    and the ``_fused`` forms limit the scales so that the int8 clamp covers every ReLU6 bound."""
    aware = option in ("activation_aware", "activation_aware_fused")
    fused = option in ("fused", "activation_aware_fused")
    channel_ranges = None
    if aware or fused:
        channel_ranges = profile_channel_ranges(state.model, link_tensors(state.model), ctx.calibration_images,
                                                ctx.config.calibration.batch_size)
    relu6 = "skip" if option == "skip_relu6" else "fused" if fused else "exact"
    result = equalize(state.model, state.folded, relu6=relu6, iterate=option == "iterate",
                      channel_ranges=channel_ranges, activation_aware=aware)
    state.model, state.folded = result.model, result.folded
    state.report["cle"] = result.report


def step_high_bias_absorption(state: PipelineState, _ctx: StepContext, _option: str | None) -> None:
    result = absorb_high_biases(state.model, state.folded)
    state.model, state.folded = result.model, result.folded
    state.report["high_bias_absorption"] = result.report


STEPS: dict[str, Step] = {
    "relu6_to_relu": step_relu6_to_relu,
    "cle": step_cle,
    "high_bias_absorption": step_high_bias_absorption,
    "fold_bn": step_fold_bn,
    "profile": step_profile,
    "gptq": step_gptq,
    "bias_correction": step_bias_correction,
}


def validate_steps(steps: tuple[TechniqueStep, ...]) -> None:
    names = [s.name for s in steps]
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        raise CalibrationError(f"no implementation for technique '{unknown[0]}'")
    if names.count("profile") != 1:
        raise CalibrationError("the technique list must contain 'profile' exactly once")
    if "fold_bn" not in names or names.index("fold_bn") > names.index("profile"):
        raise CalibrationError("'fold_bn' must come before 'profile': int8 layers cannot hold a BatchNormalization")
    for name in ("relu6_to_relu", "cle", "high_bias_absorption"):
        if name in names and not names.index("fold_bn") < names.index(name) < names.index("profile"):
            raise CalibrationError(f"'{name}' must come after 'fold_bn' and before 'profile'")
    if "bias_correction" in names and names.index("bias_correction") < names.index("profile"):
        raise CalibrationError("'bias_correction' must come after 'profile': it corrects against the encodings")
    if "gptq" in names and names.index("gptq") < names.index("profile"):
        raise CalibrationError("'gptq' must come after 'profile': it fits the weights to the quantized activations")
    if "gptq" in names and "bias_correction" in names:
        raise CalibrationError("'gptq' and 'bias_correction' both correct the weights' rounding error: choose one")


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


def run_steps(model: onnx.ModelProto, ctx: StepContext) -> PipelineState:
    """Apply the configured steps in order, recording each one's float drift and time."""
    steps = ctx.config.calibration.techniques
    validate_steps(steps)
    state = PipelineState(model=model)
    probe = np.ascontiguousarray(ctx.calibration_images[:DRIFT_PROBE_IMAGES])
    reference = run_batches(make_session(model), probe)
    state.report["steps"] = []
    drift, measured = 0.0, model
    for step in steps:
        log.info("step %s", step)
        start = time.perf_counter()
        STEPS[step.name](state, ctx, step.option)
        seconds = time.perf_counter() - start
        if state.model is not measured:  # steps that leave the float model alone (profile) keep its drift
            drift, measured = relative_change(reference, run_batches(make_session(state.model), probe)), state.model
        state.report["steps"].append({"step": str(step), "seconds": round(seconds, 3), "float_drift": drift})
    return state


def quantize(state: PipelineState, per_channel: bool) -> tuple[onnx.ModelProto, dict[str, Encoding]]:
    if state.plan is None:
        raise CalibrationError("no activation encodings: the technique list has no 'profile' step")
    return write_qdq_model(state.model, state.plan, state.activations, per_channel)


def build_dir(root: Path, workload: str) -> Path:
    return root / "build" / workload


def load_workload_data(config: WorkloadConfig, root: Path, show_progress: bool = True
                       ) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """The dataset, its calibration tensors and its evaluation tensors (memory-mapped caches)."""
    ds = config.dataset
    dataset = workload_dataset(ds.images, ds.val_map, ds.calibration_list, config.model.num_classes, root)
    cache = root / "build" / "cache"
    evaluation = load_tensors(dataset.folder, dataset.names, config.preprocessing, cache, show_progress)
    position = {name: i for i, name in enumerate(dataset.names)}
    if all(name in position for name in dataset.calibration_names):
        calibration = evaluation[[position[n] for n in dataset.calibration_names]]
    else:
        calibration = load_tensors(dataset.folder, dataset.calibration_names, config.preprocessing, cache,
                                   show_progress)
    return dataset, calibration, evaluation


def calibrate(config: WorkloadConfig, root: Path, show_progress: bool = True) -> CalibrationSummary:
    """Import, transform, profile, quantize and evaluate one workload; writes build/<name>/."""
    out = build_dir(root, config.name)
    out.mkdir(parents=True, exist_ok=True)
    log.info("[1/5] importing the float model")
    float_model = import_float_model(config.model, root / "build" / "wheels", root)
    fp32_path = out / "model.fp32.onnx"
    save_model(float_model, fp32_path)

    log.info("[2/5] loading images")
    dataset, calibration_images, evaluation_images = load_workload_data(config, root, show_progress)

    log.info("[3/5] calibrating on %d images: %s", len(calibration_images),
             ", ".join(str(s) for s in config.calibration.techniques))
    start = time.perf_counter()
    ctx = StepContext(config, calibration_images, show_progress)
    if is_auto(config.calibration.techniques):
        from calibration.search import plot_scores, search_techniques  # the search itself runs run_steps

        search = search_techniques(float_model, ctx)
        state = search.state
        state.report["technique_search"] = search.report()
        plot_scores(search.scores, out / "plots" / "technique_search.png",
                    f"{config.name}, {config.calibration.weights}: auto search on the calibration images")
    else:
        state = run_steps(float_model, ctx)
    per_channel = config.calibration.weights == "per-channel"
    int8_model, params = quantize(state, per_channel)
    calibration_seconds = time.perf_counter() - start

    log.info("[4/5] writing the int8 model and encodings")
    int8_path = out / "model.int8.onnx"
    save_model(int8_model, int8_path)
    encodings_path = out / "encodings.json"
    export_aimet_encodings(state.activations, params, encodings_path)

    log.info("[5/5] evaluating float and int8 on %d images", len(evaluation_images))
    float_logits = run_batches(make_session(float_model, optimize=True), evaluation_images)
    int8_logits = run_batches(make_session(int8_model, optimize=True), evaluation_images)
    labels = dataset.labels
    float_acc: Accuracy = accuracy(float_logits, labels, config.model.label_offset)
    int8_acc: Accuracy = accuracy(int8_logits, labels, config.model.label_offset)
    summary = CalibrationSummary(
        workload=config.name, fp32_model=fp32_path, int8_model=int8_path, encodings=encodings_path,
        report=out / "calibration_report.json", float_top1=float_acc.top1, float_top5=float_acc.top5,
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
    write_json(summary.report, report)
    if "cle" in state.report:
        plot_cle_weight_ranges(state.report["cle"]["depthwise_ranges"], out / "plots" / "cle_weight_ranges.png")
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
