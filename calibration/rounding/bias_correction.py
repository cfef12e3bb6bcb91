"""Bias correction: remove the mean output shift that int8 weights cause.

Empirical: go layer by layer in graph order. The simulated int8 model (the float model with its int8
weights, activations float) runs segment by segment on a subset of the calibration images, so each
layer sees the corrections of all the layers before it. A layer's per-output-channel mean of
(y_int8 − y_float) is subtracted from its bias, and from its output before the next segment reads
it (``calibration.rounding.segments`` streams the segments in batches within a memory budget).
Correcting every layer from one pass instead overcorrects, because later layers would undo errors that
earlier corrections already removed.

Analytical: ε = Σ over the kernel window of (W_int8 − W), E[x] from the folded BN of the layer
that produced the input, taken as N(β, γ²) through its activation (none, ReLU, Clip, or a
per-channel Min after ReLU) in closed form; b −= ε·E[x]. Layers whose input has no such
statistics (the image input, or a sum with such a tensor) fall back to the empirical shift.

The int8 weights assumed here come from ``calibration.quant.simulate.quantized_weights``, the function that
writes them into the int8 model, so they are bit-identical to the deployed ones.

The images are split into two disjoint subsets spread evenly over the list (calibration lists are
often sorted by class): ``fit_images`` fit the shifts, ``check_images`` measure each layer's mean
error before and after its correction on images the fit did not see.

Only the weights are simulated int8; activations stay float. Simulating the activation QDQ as well measured
worse: the mean error it sees in the late blocks comes from clipping, which a bias cannot undo, and keeping
only the corrections that helped gave no clear gain. See results/experiments/bias_correction.md."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
from tqdm import tqdm

from calibration.graph.index import GraphIndex, conv_group
from calibration.graph.outputs import channel_reduction_name, with_channel_reductions
from calibration.graph.patterns import clip_bounds, weight_axis
from calibration.graph.session import make_session
from calibration.quant.simulate import quantized_weights, with_int8_weights
from calibration.rounding.segments import BATCH_SIZE, SegmentRunner
from calibration.transforms.fold import FoldedBN
from workload.errors import CalibrationError

log = logging.getLogger(__name__)

Method = Literal["empirical", "analytical"]
# Ops that keep the per-channel mean of their single data input (as far as E[x] is concerned).
MEAN_PRESERVING_OPS = ("GlobalAveragePool", "Flatten", "Reshape", "Identity")


@dataclass(frozen=True)
class LayerShift:
    """One layer's correction; errors are the mean over channels of |E[y_int8 − y_float]|."""

    layer: str
    method: str  # "empirical", "analytical", "analytical→empirical" (fallback) or "skipped: no bias"
    mean_abs_shift: float
    fit_error_before: float
    check_error_before: float
    check_error_after: float

    def as_dict(self) -> dict[str, float | str]:
        return {"layer": self.layer, "method": self.method, "mean_abs_shift": self.mean_abs_shift,
                "fit_error_before": self.fit_error_before, "check_error_before": self.check_error_before,
                "check_error_after": self.check_error_after}


@dataclass(frozen=True)
class BiasCorrection:
    model: onnx.ModelProto  # a corrected copy
    shifts: list[LayerShift]
    fit_images: int
    check_images: int

    def report(self) -> dict:
        corrected = [s for s in self.shifts if not s.method.startswith("skipped")]
        return {
            "fit_images": self.fit_images, "check_images": self.check_images,
            "corrected_layers": len(corrected),
            "check_error_before_mean": float(np.mean([s.check_error_before for s in corrected])) if corrected else 0.0,
            "check_error_after_mean": float(np.mean([s.check_error_after for s in corrected])) if corrected else 0.0,
            "layers": [s.as_dict() for s in self.shifts],
        }


# ---------------------------------------------------------------- closed forms (pure numpy)

def _normal_cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf, otypes=[np.float64])(np.asarray(z, np.float64) / math.sqrt(2.0)))


def _normal_pdf(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    return np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def expected_clipped_normal(mean: np.ndarray, std: np.ndarray, low: np.ndarray | float,
                            high: np.ndarray | float) -> np.ndarray:
    """E[clip(x, low, high)] for x ~ N(mean, std²), elementwise; low may be -inf and high +inf.

    E = low·Φ(a) + high·(1 − Φ(b)) + mean·(Φ(b) − Φ(a)) + std·(φ(a) − φ(b)), a = (low − mean)/std,
    b = (high − mean)/std; a zero std gives clip(mean).
    """
    mean = np.asarray(mean, np.float64)
    std = np.abs(np.asarray(std, np.float64))
    low = np.broadcast_to(np.asarray(low, np.float64), mean.shape)
    high = np.broadcast_to(np.asarray(high, np.float64), mean.shape)
    safe = np.where(std > 0, std, 1.0)
    a, b = (low - mean) / safe, (high - mean) / safe
    cdf_a, cdf_b = _normal_cdf(a), _normal_cdf(b)
    with np.errstate(invalid="ignore"):  # inf·0 where a bound is infinite: that term is 0
        low_term = np.where(np.isfinite(low), low * cdf_a, 0.0)
        high_term = np.where(np.isfinite(high), high * (1.0 - cdf_b), 0.0)
    value = low_term + high_term + mean * (cdf_b - cdf_a) + std * (_normal_pdf(a) - _normal_pdf(b))
    return np.where(std > 0, value, np.clip(mean, low, high))


def expected_relu(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """E[ReLU(x)] = β(1 − Φ(−β/|γ|)) + |γ|φ(−β/|γ|) for x ~ N(β, γ²)."""
    return expected_clipped_normal(mean, std, 0.0, np.inf)


def weight_error_shift(error: np.ndarray, expected_input: np.ndarray, node_op: str, axis: int, group: int = 1
                       ) -> np.ndarray:
    """ε·E[x] per output channel: ``error`` = W_int8 − W (float), summed over the kernel window."""
    if node_op == "Conv":
        eps = error.reshape(error.shape[0], error.shape[1], -1).sum(axis=2).astype(np.float64)  # (O, I/G)
        per_group_in = eps.shape[1]
        outputs_per_group = eps.shape[0] // group
        x = expected_input.reshape(group, per_group_in)
        return np.einsum("oi,oi->o", eps, x[np.arange(eps.shape[0]) // outputs_per_group])
    matrix = error.astype(np.float64) if axis == 0 else error.astype(np.float64).T  # (O, I)
    return matrix @ expected_input


# ---------------------------------------------------------------- E[x] from folded BN statistics

def _pre_activation(tensor: str, index: GraphIndex, folded: dict[str, FoldedBN]) -> FoldedBN | None:
    node = index.producer.get(tensor)
    return folded.get(node.name) if node is not None else None


def expected_input(tensor: str, index: GraphIndex, folded: dict[str, FoldedBN]) -> np.ndarray | None:
    """Per-channel E[tensor] from the folded BN statistics upstream, or None where they do not reach."""
    node = index.producer.get(tensor)
    if node is None:
        return None
    if node.name in folded:
        return folded[node.name].beta.astype(np.float64)
    if node.op_type in ("Relu", "Clip"):
        bn = _pre_activation(node.input[0], index, folded)
        if bn is None:
            return None
        low, high = (0.0, np.inf) if node.op_type == "Relu" else clip_bounds(node, index)
        return expected_clipped_normal(bn.beta, bn.gamma, low, high)
    if node.op_type == "Min":  # min(ReLU(x), c) with a per-channel constant c: a per-channel clip
        data = [t for t in node.input if not index.is_constant(t)]
        bounds = [t for t in node.input if index.is_constant(t)]
        relu = index.producer.get(data[0]) if len(data) == 1 and len(bounds) == 1 else None
        if relu is None or relu.op_type != "Relu":
            return None
        bn = _pre_activation(relu.input[0], index, folded)
        if bn is None:
            return None
        return expected_clipped_normal(bn.beta, bn.gamma, 0.0, index.constant(bounds[0]).reshape(-1))
    if node.op_type == "Add":
        parts = [expected_input(t, index, folded) for t in node.input]
        if any(p is None for p in parts) or parts[0].shape != parts[1].shape:
            return None
        return parts[0] + parts[1]
    if node.op_type in MEAN_PRESERVING_OPS:
        return expected_input(node.input[0], index, folded)
    return None


# ---------------------------------------------------------------- float reference means

def float_channel_means(model: onnx.ModelProto, tensors: Sequence[str], images: np.ndarray,
                        rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-channel means of ``tensors`` over ``images`` (``images[rows]`` if given), streamed in batches: each
    image's channel means are taken inside ORT (float32, right after each tensor's producer, so that no layer
    output is copied out) and averaged over the images in float64."""
    tensors = list(dict.fromkeys(tensors))
    session = make_session(with_channel_reductions(model, tensors, ("ReduceMean",)), optimize=True)
    name = session.get_inputs()[0].name
    names = [channel_reduction_name(t, "ReduceMean") for t in tensors]
    rows = np.arange(len(images)) if rows is None else rows
    sums: dict[str, np.ndarray] = {}
    for i in range(0, len(rows), BATCH_SIZE):
        batch = np.ascontiguousarray(images[rows[i:i + BATCH_SIZE]])
        for tensor, per_image in zip(tensors, session.run(names, {name: batch})):
            sums[tensor] = sums.get(tensor, 0.0) + per_image.sum(axis=0, dtype=np.float64)
    return {t: s / len(rows) for t, s in sums.items()}


# ---------------------------------------------------------------- the correction

def spread_subsets(count: int, fit: int, check: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint, evenly spread indices of ``fit`` and ``check`` images out of ``count``.

    Calibration lists are often sorted by class (the sample images are, by wnid), so a prefix would
    fit the correction to a few classes only.
    """
    fit_index = np.unique(np.round(np.linspace(0, count - 1, fit)).astype(np.int64)) if fit else np.zeros(0, np.int64)
    rest = np.setdiff1d(np.arange(count), fit_index)
    check_index = rest[np.unique(np.round(np.linspace(0, len(rest) - 1, check)).astype(np.int64))] if check else \
        np.zeros(0, np.int64)
    return fit_index, check_index


def _bias_name(node: onnx.NodeProto) -> str | None:
    return node.input[2] if len(node.input) > 2 and node.input[2] else None


def correct_biases(model: onnx.ModelProto, images: np.ndarray, per_channel: bool, method: Method,
                   folded: dict[str, FoldedBN], fit_images: int = 256, check_images: int = 64,
                   show_progress: bool = True) -> BiasCorrection:
    """A copy of ``model`` with corrected biases, and each layer's measured shift.

    Every layer is corrected, the final FC included: leaving it uncorrected did not help held-out images
    (results/experiments/bias_correction.md).
    """
    if method not in ("empirical", "analytical"):
        raise CalibrationError(f"bias_correction: unknown method '{method}' (use empirical or analytical)")
    if len(images) < 1 or fit_images < 1:
        raise CalibrationError("bias_correction needs at least 1 calibration image to fit on")
    fit_images = min(fit_images, len(images))
    check_images = min(check_images, len(images) - fit_images)
    fit_index, check_index = spread_subsets(len(images), fit_images, check_images)
    corrected = onnx.ModelProto()
    corrected.CopyFrom(model)
    index = GraphIndex.build(corrected)
    weights = quantized_weights(corrected, per_channel)
    nodes = {n.name: n for n in corrected.graph.node}
    layers = [name for name in weights if _bias_name(nodes[name]) is not None]
    without_bias = [name for name in weights if name not in layers]

    outputs = [nodes[name].output[0] for name in layers]
    reference = float_channel_means(corrected, outputs, images, fit_index)
    reference_check = float_channel_means(corrected, outputs, images, check_index) if check_images else {}
    runner = SegmentRunner(with_int8_weights(corrected, weights), layers, images,
                           np.concatenate([fit_index, check_index]), [fit_images, check_images])
    shifts = [LayerShift(name, "skipped: no bias", 0.0, 0.0, 0.0, 0.0) for name in without_bias]
    for name in tqdm(layers, desc=f"bias correction ({method})", unit="layer", disable=not show_progress):
        node = nodes[name]
        mean_fit, mean_check = runner.advance()
        float_out = node.output[0]
        error_fit = mean_fit - reference[float_out]
        error_check = (mean_check - reference_check[float_out]) if check_images else None
        used = method
        shift = error_fit
        if method == "analytical":
            mean_x = expected_input(node.input[0], index, folded)
            if mean_x is None:
                used = "analytical→empirical"
            else:
                encoding, q = weights[name]
                error = encoding.dequantize(q) - index.constant(node.input[1])
                shift = weight_error_shift(error, mean_x, node.op_type, weight_axis(node), conv_group(node))
        bias_name = _bias_name(node)
        bias = index.constant(bias_name)
        index.set_constant(bias_name, (bias.astype(np.float64) - shift).astype(bias.dtype))
        runner.apply_shift(shift)
        check_before = float(np.mean(np.abs(error_check))) if error_check is not None else float("nan")
        check_after = float(np.mean(np.abs(error_check - shift))) if error_check is not None else float("nan")
        shifts.append(LayerShift(name, used, float(np.mean(np.abs(shift))), float(np.mean(np.abs(error_fit))),
                                 check_before, check_after))
    result = BiasCorrection(corrected, shifts, fit_images, check_images)
    summary = result.report()
    log.info("bias correction (%s): %d layers, mean |error| on %d check images %.4g -> %.4g", method, len(layers),
             check_images, summary["check_error_before_mean"], summary["check_error_after_mean"])
    return result
