"""Bias correction: closed forms against Monte-Carlo, the shift against brute-force convolution,
held-out error reduction, bit-identical int8 weights, and clear errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from calibration.graph.index import GraphIndex, conv_group
from calibration.graph.session import make_session
from calibration.quant.encodings import activation_encoding
from calibration.quant.plan import plan_quantization
from calibration.quant.simulate import quantized_weights, with_int8_weights
from calibration.quant.writer import write_qdq_model
from calibration.rounding.bias_correction import (
    correct_biases,
    expected_clipped_normal,
    expected_input,
    expected_relu,
    float_channel_means,
    spread_subsets,
    weight_error_shift,
)
from calibration.rounding.segments import SegmentRunner
from calibration.source.models.builder import GraphBuilder
from calibration.stats.profile import profile_activations
from calibration.stats.ranges import choose_range
from calibration.steps.runner import run_steps, write_int8
from calibration.steps.state import PipelineState, StepContext
from calibration.steps.techniques import check_techniques, step_bias_correction
from calibration.transforms.fold import fold_batch_norms
from tests.builders import RNG, bn_model, config_with, images, mobile_block_model
from workload.config import parse_technique
from workload.errors import CalibrationError, WorkloadError


def encodings_for(model: onnx.ModelProto, data: np.ndarray):
    plan = plan_quantization(model)
    stats = profile_activations(model, plan.activations, data, 16, None, show_progress=False)
    bounds = {out: high for out, high in plan.fused.values()}
    encodings = {}
    for name, s in stats.items():
        low, high = choose_range(s, "minmax", 99.9)
        encodings[name] = activation_encoding(low, min(high, bounds.get(name, np.inf)))
    return plan, encodings


def layer_errors(float_model: onnx.ModelProto, qmodel: onnx.ModelProto, data: np.ndarray) -> np.ndarray:
    """Per layer: mean over channels of |E[y_int8 − y_float]| at the conv/Gemm output (pre-activation)."""
    layers = [n.name for n in float_model.graph.node if n.op_type in ("Conv", "Gemm")]
    float_out = {n.name: n.output[0] for n in float_model.graph.node}
    q_out = {n.name: n.output[0] for n in qmodel.graph.node}
    ref = float_channel_means(float_model, [float_out[n] for n in layers], data)
    got = float_channel_means(qmodel, [q_out[n] for n in layers], data)
    return np.array([np.mean(np.abs(got[q_out[n]] - ref[float_out[n]])) for n in layers])


@pytest.mark.parametrize(("low", "high"), [(0.0, np.inf), (0.0, 6.0), (-1.0, 2.0), (-np.inf, 0.5)])
def test_expected_clipped_normal_matches_monte_carlo(low: float, high: float) -> None:
    mean = np.array([-3.0, -0.5, 0.0, 0.7, 2.0, 5.5, 9.0])
    std = np.array([1.0, 2.0, 0.3, 1.5, 4.0, 1.0, 3.0])
    samples = RNG.normal(mean[:, None], std[:, None], (len(mean), 400_000))
    monte_carlo = np.clip(samples, low, high).mean(axis=1)
    standard_error = np.clip(samples, low, high).std(axis=1) / np.sqrt(samples.shape[1])
    closed = expected_clipped_normal(mean, std, low, high)
    assert np.all(np.abs(closed - monte_carlo) < 5 * standard_error + 1e-6)


def test_expected_relu_is_the_papers_formula_and_uses_abs_gamma() -> None:
    beta = np.array([-1.0, 0.0, 1.5])
    gamma = np.array([-2.0, 1.0, -0.5])  # negative γ: the BN output is N(β, γ²), so |γ| counts
    samples = RNG.normal(beta[:, None], np.abs(gamma)[:, None], (3, 400_000))
    np.testing.assert_allclose(expected_relu(beta, gamma), np.maximum(samples, 0).mean(axis=1), atol=0.01)
    np.testing.assert_allclose(expected_relu(beta, np.zeros(3)), np.maximum(beta, 0))


def test_per_channel_clip_bounds() -> None:
    mean, std, bound = np.array([1.0, 4.0]), np.array([2.0, 2.0]), np.array([6.0, 0.5])
    samples = RNG.normal(mean[:, None], std[:, None], (2, 400_000))
    expected = np.minimum(np.maximum(samples, 0), bound[:, None]).mean(axis=1)
    np.testing.assert_allclose(expected_clipped_normal(mean, std, 0.0, bound), expected, atol=0.01)


@pytest.mark.parametrize("group", [1, 2, 8])
def test_weight_error_shift_matches_brute_force_convolution(group: int) -> None:
    """For a per-channel constant input, conv(W_q) − conv(W) inside the borders is exactly ε·E[x]."""
    out_channels, in_channels = 8, 8
    w = RNG.normal(0, 1, (out_channels, in_channels // group, 3, 3)).astype(np.float32)
    wq = (w + RNG.normal(0, 0.05, w.shape)).astype(np.float32)
    mean_x = RNG.normal(0, 1, in_channels)
    g = GraphBuilder("x", in_channels, 5, 5)
    g.conv("x", "c", wq - w, np.zeros(out_channels), group=group, pads=(0, 0, 0, 0))
    model = g.build("c", [])
    model.graph.output.extend([onnx.helper.make_tensor_value_info("c.out", onnx.TensorProto.FLOAT, None)])
    x = np.broadcast_to(mean_x.reshape(1, -1, 1, 1), (1, in_channels, 5, 5)).astype(np.float32)
    brute = make_session(model).run(None, {"x": np.ascontiguousarray(x)})[0][0, :, 1, 1]
    np.testing.assert_allclose(weight_error_shift(wq - w, mean_x, "Conv", 0, group), brute, rtol=1e-4, atol=1e-5)


def test_gemm_shift_for_both_weight_layouts() -> None:
    error, mean_x = RNG.normal(0, 1, (4, 6)), RNG.normal(0, 1, 6)
    np.testing.assert_allclose(weight_error_shift(error, mean_x, "Gemm", 0), error @ mean_x)
    np.testing.assert_allclose(weight_error_shift(error.T, mean_x, "MatMul", 1), error @ mean_x)


def test_expected_input_follows_bn_activations_and_pooling() -> None:
    folded_model, folded, _ = fold_batch_norms(bn_model())
    index = GraphIndex.build(folded_model)
    stats = {f.layer: f for f in folded}
    node = {n.name: n for n in folded_model.graph.node}
    assert expected_input(node["c1"].input[0], index, stats) is None  # the image input: no BN
    np.testing.assert_allclose(expected_input(node["dw"].input[0], index, stats),
                               expected_clipped_normal(stats["c1"].beta, stats["c1"].gamma, 0.0, 6.0))
    np.testing.assert_allclose(expected_input(node["pw"].input[0], index, stats),
                               expected_relu(stats["dw"].beta, stats["dw"].gamma))
    np.testing.assert_allclose(expected_input(node["fc"].input[0], index, stats), stats["pw"].beta)


def test_empirical_correction_reduces_held_out_mean_error() -> None:
    """Fitted with int8 weights only, the correction also shrinks the mean error of the full QDQ model."""
    model, folded, _ = fold_batch_norms(bn_model())
    calibration, held_out = images(192), images(128)
    plan, encodings = encodings_for(model, calibration)
    result = correct_biases(model, calibration, False, "empirical", {f.layer: f for f in folded},
                            fit_images=128, check_images=64)
    before = layer_errors(model, write_qdq_model(model, plan, encodings, False)[0], held_out)
    after = layer_errors(model, write_qdq_model(result.model, plan, encodings, False)[0], held_out)
    assert before.mean() > 1e-3  # the outlier channels make per-tensor int8 visibly biased
    assert after.mean() < 0.5 * before.mean()
    assert after.sum() < before.sum()
    report = result.report()
    assert report["check_error_after_mean"] < report["check_error_before_mean"]
    assert [s.layer for s in result.shifts] == ["c1", "dw", "pw", "fc"]
    assert all(s.method == "empirical" for s in result.shifts)


def test_sequential_correction_zeroes_the_fit_error_layer_by_layer() -> None:
    """Each layer is measured after all earlier corrections, so on the fit images every error vanishes."""
    model, folded, _ = fold_batch_norms(bn_model())
    data = images(64)
    result = correct_biases(model, data, False, "empirical", {f.layer: f for f in folded},
                            fit_images=64, check_images=0)
    fitted = layer_errors(model, with_int8_weights(result.model, quantized_weights(result.model, False)), data)
    before = np.array([s.fit_error_before for s in result.shifts])
    assert before.min() > 1e-4
    assert np.all(fitted < 1e-3 * before + 1e-6)  # float32 rounding only


def int8_weight(qmodel: onnx.ModelProto, weight_name: str) -> np.ndarray:
    init = {i.name: numpy_helper.to_array(i) for i in qmodel.graph.initializer}
    q = init[f"{weight_name}.int8"].astype(np.float64)
    scale = init[f"{weight_name}.scale"].astype(np.float64)
    return q * (scale.reshape(-1, *([1] * (q.ndim - 1))) if scale.ndim else scale)


@pytest.mark.parametrize("weights", ["per-tensor", "per-channel"])
def test_analytical_shift_uses_the_int8_models_weights_bit_for_bit(weights: str) -> None:
    """b_after − b_before = −(W_int8 − W)·E[x], with W_int8 read back from the written int8 model."""
    data = images(64)
    plain = run_steps(bn_model(), StepContext(config_with("fold_bn,profile", weights), data, False))
    corrected = run_steps(bn_model(), StepContext(config_with("fold_bn,profile,bias_correction:analytical",
                                                              weights), data, False))
    qmodel, _ = write_int8(corrected, weights == "per-channel")
    before, after = GraphIndex.build(plain.model), GraphIndex.build(corrected.model)
    assumed = quantized_weights(corrected.model, weights == "per-channel")
    methods = {row["layer"]: row["method"] for row in corrected.report["bias_correction"]["layers"]}
    assert methods == {"c1": "analytical→empirical", "dw": "analytical", "pw": "analytical", "fc": "analytical"}
    for node in corrected.model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        written = int8_weight(qmodel, node.input[1])
        encoding, q = assumed[node.name]
        assert np.array_equal(q.astype(np.float64) * (encoding.scale.reshape(-1, *([1] * (q.ndim - 1)))
                                                      if encoding.scale.ndim else encoding.scale), written)
        if methods[node.name] != "analytical":
            continue
        float_w = after.constant(node.input[1])
        mean_x = expected_input(node.input[0], after, corrected.folded)
        shift = weight_error_shift(written - float_w, mean_x, node.op_type, 0, conv_group(node))
        np.testing.assert_allclose(before.constant(node.input[2]) - after.constant(node.input[2]), shift,
                                   rtol=1e-5, atol=1e-6)


def test_bias_correction_keeps_the_float_function_but_changes_only_biases() -> None:
    data = images(32)
    state = run_steps(bn_model(), StepContext(config_with("fold_bn,profile,bias_correction"), data, False))
    plain = run_steps(bn_model(), StepContext(config_with("fold_bn,profile"), data, False))
    changed = {i.name for i, j in zip(state.model.graph.initializer, plain.model.graph.initializer)
               if not np.array_equal(numpy_helper.to_array(i), numpy_helper.to_array(j))}
    assert changed and all(name.endswith("bias") for name in changed)
    assert state.report["bias_correction"]["method"] == "empirical"


def test_clear_errors() -> None:
    with pytest.raises(WorkloadError, match="does not take option 'median'"):
        check_techniques((parse_technique("bias_correction:median", "TECHNIQUES"),))
    with pytest.raises(WorkloadError, match="unknown technique 'bias_corection'"):
        check_techniques((parse_technique("bias_corection", "TECHNIQUES"),))
    with pytest.raises(CalibrationError, match="must come after 'profile'"):
        check_techniques(config_with("fold_bn,bias_correction,profile").calibration.techniques)
    model, _, _ = fold_batch_norms(bn_model())
    with pytest.raises(CalibrationError, match="unknown method 'median'"):
        correct_biases(model, images(8), True, "median", {})  # type: ignore[arg-type]
    with pytest.raises(CalibrationError, match="after 'profile'"):
        step_bias_correction(PipelineState(model=model), StepContext(config_with("fold_bn,profile"), images(4), False),
                             "empirical")


@pytest.mark.parametrize(("count", "fit", "check"), [(500, 256, 64), (10, 4, 6), (7, 7, 0), (64, 64, 0)])
def test_fit_and_check_subsets_are_disjoint_and_spread(count: int, fit: int, check: int) -> None:
    fit_index, check_index = spread_subsets(count, fit, check)
    assert len(fit_index) == fit and len(check_index) == check
    assert not set(fit_index) & set(check_index) and set(fit_index) | set(check_index) <= set(range(count))
    assert fit_index[0] == 0 and fit_index[-1] == count - 1  # both ends of a class-sorted list


@pytest.mark.parametrize("build", [bn_model, mobile_block_model])
def test_streamed_segments_equal_holding_every_tensor_and_the_shifted_model(build) -> None:
    """No checkpoint (recompute from the input) and a checkpoint after every segment (the first version, which
    held every tensor for all images) give bit-identical means, equal to the model's with shifted biases."""
    model, _, _ = fold_batch_norms(build())
    layers = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 2]
    data, groups = images(40), [27, 13]  # groups straddle the 16-image batches

    def run(budget: int) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        runner = SegmentRunner(model, layers, data, np.arange(len(data)), groups, budget)
        means, shifts = [], {}
        for name in layers:
            fit, check = runner.advance()
            means += [fit, check]
            shifts[name] = 0.5 * fit + 0.1
            runner.apply_shift(shifts[name])
        return means, shifts

    held, shifts = run(2**40)
    streamed, _ = run(0)
    assert all(np.array_equal(a, b) for a, b in zip(held, streamed))
    shifted = onnx.ModelProto()
    shifted.CopyFrom(model)
    index = GraphIndex.build(shifted)
    nodes = {n.name: n for n in shifted.graph.node}
    for name in layers:
        bias = index.constant(nodes[name].input[2])
        index.set_constant(nodes[name].input[2], (bias - shifts[name]).astype(bias.dtype))
    outputs = [nodes[name].output[0] for name in layers]
    fit_ref = float_channel_means(shifted, outputs, data[:27])
    check_ref = float_channel_means(shifted, outputs, data[27:])
    for k, out in enumerate(outputs):
        shift = shifts[layers[k]]  # the means are taken before the layer's own shift
        np.testing.assert_allclose(held[2 * k] - shift, fit_ref[out], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(held[2 * k + 1] - shift, check_ref[out], rtol=1e-5, atol=1e-5)
