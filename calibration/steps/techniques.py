"""Every technique a workload may name, in one registry: its adapter, options, order rules and the text
``calibration.md`` prints for it. A new technique is one adapter function and one ``Technique`` entry here."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calibration.quant.encodings import activation_encoding
from calibration.quant.plan import plan_quantization
from calibration.rounding.bias_correction import correct_biases
from calibration.rounding.gptq import layer_hessians, round_weights
from calibration.stats.channels import ChannelStats, channel_ranges, profile_channels
from calibration.stats.profile import profile_activations
from calibration.stats.ranges import HISTOGRAM_METHODS, choose_range
from calibration.steps.state import ChannelView, PipelineState, Step, StepContext
from calibration.transforms.cle.driver import equalize
from calibration.transforms.cle.sets import link_tensors
from calibration.transforms.fold import fold_batch_norms
from calibration.transforms.high_bias import absorb_high_biases
from calibration.transforms.relu6 import relu6_to_relu
from workload.config import TechniqueStep
from workload.errors import CalibrationError, WorkloadError

# ``PipelineState.shared`` key of the per-channel statistics of the calibration images (the model they were
# profiled on, and the statistics): the search's CLE variants from one folded model share them.
CHANNEL_STATS = "channel_stats"


def step_fold_bn(state: PipelineState, _ctx: StepContext, _option: str | None) -> None:
    state.model, folded, skipped = fold_batch_norms(state.model)
    state.folded.update({f.layer: f for f in folded})
    state.report["fold_bn"] = {"folded": [f.layer for f in folded], "skipped": skipped}


def _channel_stats(state: PipelineState, ctx: StepContext, tensors: list[str], share: bool) -> dict[str, ChannelStats]:
    """Per-channel statistics of ``tensors`` in ``state.model``: the shared ones where they cover them, else from
    a pass, then shared if ``share`` or if nothing is yet."""
    source, stats = state.shared.get(CHANNEL_STATS, (None, {}))
    if source is state.model and all(t in stats for t in tensors):
        return stats
    stats = profile_channels(state.model, tensors, ctx.calibration_images, ctx.config.calibration.batch_size,
                             ctx.show_progress, "channel statistics" if share else "profile")
    if share or CHANNEL_STATS not in state.shared:
        state.shared[CHANNEL_STATS] = (state.model, stats)
    return stats


def step_profile(state: PipelineState, ctx: StepContext, _option: str | None) -> None:
    """Per-tensor statistics of the calibration images. ``minmax`` and ``mean_minmax`` take them from per-channel
    ones: CLE's, where it ran just before (no second pass), or a pass of their own that the search's later
    candidates on the same model share; the histogram methods take one pass of ``profile_activations``."""
    cal = ctx.config.calibration
    state.plan = plan_quantization(state.model)
    tensors = [*state.plan.activations, *state.plan.outputs]
    view, state.channels = state.channels, None
    if cal.range in HISTOGRAM_METHODS:
        state.stats = profile_activations(state.model, tensors, ctx.calibration_images, cal.batch_size,
                                          cal.histogram_bins, ctx.show_progress)
    else:
        if view is None or view.model is not state.model or any(t not in view.stats for t in tensors):
            view = ChannelView(state.model, _channel_stats(state, ctx, tensors, share=False))
        state.stats = view.tensor_stats(tensors)
    upper_bounds = {out: bound for out, bound in state.plan.fused.values()}
    encodings = {}
    for name, stats in state.stats.items():
        # A graph output (the logits) keeps its whole range: clipping it at a typical maximum would merge the
        # top classes of exactly the images whose winning logit is largest.
        low, high = ((stats.minimum, stats.maximum) if name in state.plan.outputs
                     else choose_range(stats, cal.range, cal.percentile))
        encodings[name] = activation_encoding(low, min(high, upper_bounds.get(name, np.inf)))
    state.activations = {name: encodings[name] for name in state.plan.activations}
    state.outputs = {name: encodings[name] for name in state.plan.outputs}
    state.report["activation_ranges"] = {
        name: {
            "min": s.minimum, "max": s.maximum, "mean_min": s.mean_min, "mean_max": s.mean_max,
            "range_min": float(encodings[name].range_min), "range_max": float(encodings[name].range_max),
            "scale": float(encodings[name].scale), "zero_point": int(encodings[name].zero_point),
        }
        for name, s in state.stats.items()
    }


def step_bias_correction(state: PipelineState, ctx: StepContext, option: str | None) -> None:
    if state.plan is None:
        raise CalibrationError("'bias_correction' needs activation encodings: put it after 'profile'")
    # The simulated int8 model quantizes weights only (results/experiments/bias_correction.md says why).
    result = correct_biases(state.model, ctx.calibration_images, ctx.config.calibration.per_channel,
                            option or "empirical", state.folded, show_progress=ctx.show_progress)
    state.model = result.model
    state.report["bias_correction"] = {"method": option or "empirical", **result.report()}


def step_gptq(state: PipelineState, ctx: StepContext, option: str | None) -> None:
    """``gptq`` rounds each layer's columns in their stored order, ``gptq:act_order`` largest input energy first."""
    if state.plan is None:
        raise CalibrationError("'gptq' needs activation encodings: put it after 'profile'")
    cal = ctx.config.calibration
    # Branches of one profiled state (the search's two column orders) share its Hessians.
    source, activations, hessians = state.shared.get("gptq_hessians", (None, None, None))
    if source is not state.model or activations is not state.activations:
        hessians = layer_hessians(state.model, state.plan, state.activations, ctx.calibration_images,
                                  cal.batch_size, cal.per_channel, ctx.show_progress)
        state.shared["gptq_hessians"] = (state.model, state.activations, hessians)
    state.model, layers = round_weights(state.model, hessians, cal.per_channel, ctx.show_progress,
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
    # The per-channel statistics CLE's fits need also give profile's, where its range method needs no histogram
    # and profile comes right after CLE (high-bias absorption would change the model in a way they do not
    # describe); plain CLE takes a pass for them only then.
    names = [s.name for s in ctx.config.calibration.techniques]
    derived = (ctx.config.calibration.range not in HISTOGRAM_METHODS and "cle" in names
               and names[names.index("cle") + 1 : names.index("cle") + 2] == ["profile"])
    stats = None
    if aware or fused or derived:
        tensors = link_tensors(state.model)
        if ctx.config.calibration.range not in HISTOGRAM_METHODS:  # the search's later candidates may derive theirs
            try:
                plan = plan_quantization(state.model)
                tensors += [*plan.activations, *plan.outputs]
            except CalibrationError:  # profile says why
                derived = False
        stats = _channel_stats(state, ctx, tensors, share=True)
    relu6 = "skip" if option == "skip_relu6" else "fused" if fused else "exact"
    result = equalize(state.model, state.folded, relu6=relu6, iterate=option == "iterate",
                      channel_ranges=channel_ranges(stats) if stats is not None and (aware or fused) else None,
                      activation_aware=aware)
    state.model, state.folded = result.model, result.folded
    state.channels = ChannelView(result.model, stats, result.divisors) if stats is not None and derived else None
    state.report["cle"] = result.report


def step_high_bias_absorption(state: PipelineState, _ctx: StepContext, _option: str | None) -> None:
    result = absorb_high_biases(state.model, state.folded)
    state.model, state.folded = result.model, result.folded
    state.report["high_bias_absorption"] = result.report



@dataclass(frozen=True)
class Rule:
    """An order rule: ``other`` must stand on the named side of the technique, for the reason given."""

    other: str
    why: str


@dataclass(frozen=True)
class Technique:
    name: str
    text: str  # what calibration.md says the step does
    adapter: Step | None  # None only for 'auto', which the quantize entry point runs as a search
    options: tuple[str | None, ...] = (None,)  # None: the step may be named without an option
    after: tuple[Rule, ...] = ()  # steps that must come earlier (when both are listed)
    before: tuple[Rule, ...] = ()  # steps that must come later; listed as required when the step is
    excludes: tuple[Rule, ...] = ()
    required: bool = False  # every list (but 'auto') holds this step exactly once
    alone: bool = False  # the step is the whole list


TRANSFORM_ORDER = (Rule("fold_bn", "it transforms the folded float model"),)
TRANSFORM_BEFORE = (Rule("profile", "the encodings must see the transformed model"),)

TECHNIQUES: dict[str, Technique] = {t.name: t for t in (
    Technique("fold_bn", "batch-norm folding into the preceding convolution", step_fold_bn, required=True,
              before=(Rule("profile", "int8 layers cannot hold a BatchNormalization"),)),
    Technique("relu6_to_relu", "ReLU6 replaced by ReLU (as in the data-free quantization paper)", step_relu6_to_relu,
              after=TRANSFORM_ORDER, before=TRANSFORM_BEFORE),
    # None: exact. The _fused forms keep ReLU6 exact within the int8 clamp (calibration/transforms/cle/).
    Technique("cle", "cross-layer equalization", step_cle,
              options=(None, "exact", "skip_relu6", "iterate", "activation_aware", "fused", "activation_aware_fused"),
              after=TRANSFORM_ORDER, before=TRANSFORM_BEFORE),
    Technique("high_bias_absorption", "high-bias absorption", step_high_bias_absorption,
              after=TRANSFORM_ORDER, before=TRANSFORM_BEFORE),
    Technique("profile", "activation profiling on the calibration images (running min/max and histograms)",
              step_profile, required=True),
    Technique("bias_correction", "bias correction", step_bias_correction, options=(None, "empirical", "analytical"),
              after=(Rule("profile", "it corrects against the encodings"),)),
    Technique("gptq", "GPTQ weight rounding (int8 weights chosen against the calibration images' input statistics; "
              "no training)", step_gptq, options=(None, "act_order"),
              after=(Rule("profile", "it fits the weights to the quantized activations"),),
              excludes=(Rule("bias_correction", "both correct the weights' rounding error: choose one"),)),
    Technique("auto", "the technique search (scored on the calibration images only)", None, alone=True),
)}


def check_option(step: TechniqueStep) -> None:
    """An unknown technique or option is one ``WorkloadError`` naming where the step was written."""
    where = step.where or "TECHNIQUES"
    technique = TECHNIQUES.get(step.name)
    if technique is None:
        raise WorkloadError(f"{where}: unknown technique '{step.name}' (known: {', '.join(TECHNIQUES)})")
    if step.option not in technique.options:
        allowed = ", ".join(str(o) for o in technique.options if o is not None) or "none"
        raise WorkloadError(f"{where}: technique '{step.name}' does not take option '{step.option}' "
                            f"(options: {allowed})")


def is_auto(steps: tuple[TechniqueStep, ...]) -> bool:
    return any(TECHNIQUES[s.name].alone for s in steps if s.name in TECHNIQUES)


def check_techniques(steps: tuple[TechniqueStep, ...]) -> None:
    """Names, options and order of a technique list, checked before any work is done."""
    if not steps:
        raise WorkloadError("the technique list is empty")
    for step in steps:
        check_option(step)
    names = [s.name for s in steps]
    for name in names:
        if TECHNIQUES[name].alone and len(names) != 1:
            where = steps[0].where.rpartition("[")[0] or "TECHNIQUES"
            raise WorkloadError(f"{where}: '{name}' picks the whole technique list; it cannot be combined with "
                                "other steps")
    if is_auto(steps):
        return
    for technique in TECHNIQUES.values():
        if technique.required and names.count(technique.name) != 1:
            raise CalibrationError(f"the technique list must contain '{technique.name}' exactly once")
    for i, name in enumerate(names):
        technique = TECHNIQUES[name]
        for rule in technique.after:
            if rule.other in names and names.index(rule.other) > i:
                raise CalibrationError(f"'{name}' must come after '{rule.other}': {rule.why}")
        for rule in technique.before:
            if rule.other in names and names.index(rule.other) < i:
                raise CalibrationError(f"'{name}' must come before '{rule.other}': {rule.why}")
        for rule in technique.excludes:
            if rule.other in names:
                raise CalibrationError(f"'{name}' and '{rule.other}' {rule.why}")
