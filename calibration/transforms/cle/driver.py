"""Cross-layer equalization (CLE), ReLU6 handling and high-bias absorption (Nagel et al., ICCV 2019).

- Sets are found in one pass over the graph: every Conv's successor (through at most one Relu,
  Clip(0, c) or Relu→Min activation, every tensor on the way having a single consumer) is
  computed once, successors are chained, and chains split into conv→depthwise→conv triplets and
  conv→conv pairs. A fork (a residual branch) ends a chain.
- The scale math is plain numpy: pairs s = sqrt(r1/r2), triplets the cube-root form, and an
  activation-aware mode that fits each set's log-scales by least squares so that the per-channel
  ranges of the weights *and* of the activations between them become flat together.
- A Clip(0, c) between scaled layers becomes min(ReLU(x), c/s_i) per channel ("exact" mode, the
  float function is unchanged) or leaves the set unscaled ("skip" mode); ``relu6_to_relu``
  replaces it by ReLU as the paper does (this changes the float function). "fused" mode is exact
  too, but lowers the scales where needed so that every channel's bound c/s_i stays at or above
  the largest value the tensor takes on the calibration images: the int8 clamp then cuts at or
  below every bound, so the int8 model needs no per-channel Min and every layer stays fused.
  High-bias absorption afterwards lowers some bounds by what it absorbs; where a bound then falls
  below the int8 range, the writer keeps that tensor's Min (still exact).
- High-bias absorption moves max(0, β − 3|γ|) of each channel (all of β with no activation)
  from a layer's bias into the next layer's bias, using the BN statistics kept by BN folding.

The activation-aware fit uses each channel's mean over the images of its per-image maximum, and keeps the
weight terms of every layer in the set. Blending in the channel's largest value, or leaving out the weight
terms that per-channel weight quantization does not see, gave no clear gain: see results/experiments/cle.md.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Literal

import numpy as np
import onnx

from calibration.stats.channels import ChannelRanges
from calibration.transforms.cle.scales import (
    activation_aware_scales,
    fusable_scales,
    input_channel_ranges,
    output_channel_ranges,
    pair_scales,
    range_spread,
    triplet_scales,
)
from calibration.transforms.cle.sets import CleSet, SkippedSet, find_cle_sets
from calibration.transforms.cle.workspace import EqualizationResult, Workspace
from calibration.transforms.fold import FoldedBN
from workload.errors import CalibrationError

log = logging.getLogger(__name__)

Relu6Mode = Literal["exact", "skip", "fused"]

ITERATION_TOLERANCE = 1e-4  # iterate until no scale of a pass moves more than this (in log)
MAX_ITERATIONS = 100
PLOTTED_DEPTHWISE_LAYERS = 3


# ---------------------------------------------------------------------------------------------
# Numpy scale math
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Graph search
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Applying scales
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# CLE
# ---------------------------------------------------------------------------------------------


def _plain_scales(ws: Workspace, cle_set: CleSet) -> list[np.ndarray]:
    layers = [ws.layers[n] for n in cle_set.layers]
    r_first = output_channel_ranges(layers[0].weight)
    r_last = input_channel_ranges(layers[-1].weight, layers[-1].depthwise)
    if len(layers) == 2:
        return [pair_scales(r_first, r_last)]
    return list(triplet_scales(r_first, output_channel_ranges(layers[1].weight), r_last))


def _link_ranges(channel_ranges: dict[str, ChannelRanges], tensor: str) -> ChannelRanges:
    if tensor not in channel_ranges:
        raise CalibrationError(f"CLE: no per-channel statistics for '{tensor}'")
    return channel_ranges[tensor]


def _aware_scales(ws: Workspace, cle_set: CleSet, channel_ranges: dict[str, ChannelRanges]) -> list[np.ndarray]:
    layers = [ws.layers[n] for n in cle_set.layers]
    k = len(cle_set.links)
    unit = np.eye(k, dtype=int)
    terms = [(output_channel_ranges(layers[0].weight), tuple(-unit[0]))]
    for j, link in enumerate(cle_set.links):
        terms.append((_link_ranges(channel_ranges, link.tensor).mean_max, tuple(-unit[j])))
        if j + 1 < k:  # a depthwise middle layer: input scaled by s_j, output by 1/s_(j+1)
            terms.append((output_channel_ranges(layers[j + 1].weight), tuple(unit[j] - unit[j + 1])))
    terms.append((input_channel_ranges(layers[-1].weight, layers[-1].depthwise), tuple(unit[k - 1])))
    return activation_aware_scales(terms)


def equalize(model: onnx.ModelProto, folded: dict[str, FoldedBN], relu6: Relu6Mode = "exact",
             iterate: bool = False, channel_ranges: dict[str, ChannelRanges] | None = None,
             activation_aware: bool = False) -> EqualizationResult:
    """CLE on a copy of ``model``. ``channel_ranges`` (per-channel statistics of each link tensor on
    the calibration images) are needed by the activation-aware mode and by ReLU6 mode "fused".
    ``folded`` BN statistics are divided by the output scales."""
    sets, skipped = find_cle_sets(model)
    if (activation_aware or relu6 == "fused") and channel_ranges is None:
        raise CalibrationError("CLE: the activation-aware mode and ReLU6 mode 'fused' need per-channel "
                               "statistics of the calibration images")
    ranges = dict(channel_ranges or {})
    active: list[CleSet] = []
    for cle_set in sets:
        if relu6 == "skip" and cle_set.has_relu6:
            skipped.append(SkippedSet(cle_set.layers, "ReLU6 between the layers and relu6 mode 'skip'"))
        else:
            active.append(cle_set)
    ws = Workspace.load(model, active)
    dw_names = [n for s in active for n in s.layers if ws.layers[n].depthwise][:PLOTTED_DEPTHWISE_LAYERS]
    before = {n: output_channel_ranges(ws.layers[n].weight).tolist() for n in dw_names}
    spread_before = [range_spread(output_channel_ranges(ws.layers[s.layers[0]].weight)) for s in active]
    max_passes, passes, largest_step = (MAX_ITERATIONS if iterate else 1), 0, np.inf
    while passes < max_passes and largest_step >= ITERATION_TOLERANCE:
        passes += 1
        largest_step = 0.0
        for cle_set in active:
            scales = _aware_scales(ws, cle_set, ranges) if activation_aware else _plain_scales(ws, cle_set)
            for j, link in enumerate(cle_set.links):
                if relu6 == "fused" and link.tensor in ws.bounds:
                    maxima = _link_ranges(ranges, link.tensor).maximum
                    scales[j] = fusable_scales(scales[j], ws.bounds[link.tensor], maxima)
                ws.scale_link(cle_set.layers[j], cle_set.layers[j + 1], link, scales[j])
                largest_step = max(largest_step, float(np.abs(np.log(scales[j])).max(initial=0.0)))
                if link.tensor in ranges:
                    r = ranges[link.tensor]
                    ranges[link.tensor] = ChannelRanges(r.mean_max / scales[j], r.maximum / scales[j])
    new_folded = dict(folded)
    for name, layer in ws.layers.items():
        if name in folded:
            bn = folded[name]
            new_folded[name] = replace(bn, gamma=bn.gamma / layer.out_scale, beta=bn.beta / layer.out_scale)
    scaled = dict.fromkeys(n for s in active for n in s.layers[:-1])
    out_scales = np.concatenate([ws.layers[n].out_scale for n in scaled]) if scaled else np.ones(1)
    report = {
        "mode": "activation_aware" if activation_aware else "plain",
        "relu6": relu6,
        "passes": passes,
        "sets": [
            {"layers": list(s.layers), "links": [link.kind for link in s.links],
             "weight_range_spread_before": spread,
             "weight_range_spread_after": range_spread(output_channel_ranges(ws.layers[s.layers[0]].weight)),
             "scale_min": float(ws.layers[s.layers[0]].out_scale.min()),
             "scale_max": float(ws.layers[s.layers[0]].out_scale.max())}
            for s, spread in zip(active, spread_before)
        ],
        "skipped": [{"layers": list(s.layers), "reason": s.reason} for s in skipped],
        "scales": {"count": int(out_scales.size), "min": float(out_scales.min()), "max": float(out_scales.max()),
                   "median_abs_log": float(np.median(np.abs(np.log(out_scales))))},
        "depthwise_ranges": {n: {"before": before[n], "after": output_channel_ranges(ws.layers[n].weight).tolist()}
                             for n in dw_names},
        # Exact ReLU6: each clip's per-channel bounds c/s after scaling (the per-tensor range follows the
        # largest) and, with calibration statistics, the largest value the tensor took.
        "relu6_bounds": {
            tensor: {"min": float(b.min()), "max": float(b.max()),
                     **({"largest_value": float(ranges[tensor].maximum.max())} if tensor in ranges else {})}
            for tensor, b in ws.bounds.items()},
    }
    log.info("CLE: %d sets scaled, %d skipped, %d pass(es)", len(active), len(skipped), passes)
    divisors = ws.divisors(active)  # before write_back replaces Clips (their outputs keep their names)
    return EqualizationResult(ws.write_back(active), new_folded, report, divisors)


# ---------------------------------------------------------------------------------------------
# ReLU6 → ReLU
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# High-bias absorption
# ---------------------------------------------------------------------------------------------


