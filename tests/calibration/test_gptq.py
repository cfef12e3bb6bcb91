"""GPTQ weight rounding: im2col against ORT's convolution, lower output error than round-to-nearest on
held-out inputs, the int8 model's weights exactly the rounded ones, and the step's order rules."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from calibration.graph.index import GraphIndex
from calibration.graph.session import make_session
from calibration.quant.encodings import activation_encoding, weight_encoding
from calibration.quant.simulate import with_activation_qdq
from calibration.rounding.gptq import conv_patches, gptq_round, input_hessians, output_error
from calibration.source.models.builder import GraphBuilder
from calibration.steps.runner import run_steps, write_int8
from calibration.steps.state import StepContext
from calibration.steps.techniques import check_techniques
from tests.builders import config_with, images
from workload.errors import CalibrationError

RNG = np.random.default_rng(11)


@pytest.mark.parametrize(("group", "kernel", "stride", "pads", "dilation"), [
    (1, 3, 1, (1, 1, 1, 1), 1),
    (1, 1, 1, (0, 0, 0, 0), 1),
    (6, 3, 2, (0, 0, 1, 1), 1),  # depthwise, stride 2, TF "same" padding
    (2, 5, 1, (2, 2, 2, 2), 1),
    (1, 3, 1, (2, 2, 2, 2), 2),
])
def test_conv_patches_times_weight_is_the_convolution(group: int, kernel: int, stride: int,
                                                      pads: tuple[int, ...], dilation: int) -> None:
    channels, out_channels = 6, 6
    x = RNG.normal(0, 1, (2, channels, 9, 9)).astype(np.float32)
    w = RNG.normal(0, 1, (out_channels, channels // group, kernel, kernel)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c", kernel_shape=[kernel, kernel],
                            strides=[stride, stride], pads=list(pads), group=group, dilations=[dilation, dilation])
    graph = helper.make_graph([node], "c", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    expected = make_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])).run(
        None, {"x": x})[0]
    patches = conv_patches(x, node, (kernel, kernel))  # (groups, N·H·W, K)
    grouped = w.reshape(group, out_channels // group, -1)
    got = np.matmul(patches, grouped.transpose(0, 2, 1))  # (groups, N·H·W, out/groups)
    n, _, h, wd = expected.shape
    got = got.reshape(group, n, h, wd, -1).transpose(1, 0, 4, 2, 3).reshape(expected.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def correlated_rows(count: int, mixing: np.ndarray) -> np.ndarray:
    return (RNG.normal(0, 1, (count, mixing.shape[0])) @ mixing).astype(np.float64)


def hessian_of(rows: np.ndarray) -> np.ndarray:
    augmented = np.hstack([rows, np.ones((len(rows), 1))])
    return (augmented.T @ augmented)[None]


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("per_channel", [True, False])
def test_gptq_beats_round_to_nearest_on_held_out_inputs(per_channel: bool, act_order: bool) -> None:
    k, rows = 48, 16
    mixing = RNG.normal(0, 1, (k, k)) * np.linspace(2.0, 0.1, k)  # correlated, unevenly scaled inputs
    mixing[:, :8] += 1.0  # and not centred, so the bias has error to absorb
    fit, held_out = correlated_rows(4000, mixing), correlated_rows(4000, mixing)
    weight, bias = RNG.normal(0, 1, (rows, k)), RNG.normal(0, 1, rows)
    weight[0] *= 10  # one large row: per-tensor scales are coarse for the others
    original = np.concatenate([weight, bias[:, None]], axis=1)[None]
    encoding = weight_encoding(weight, per_channel)
    codes, new_bias = gptq_round(original, hessian_of(fit), encoding, free_columns=1, act_order=act_order)
    assert codes.min() >= -127 and codes.max() <= 127
    scale = encoding.scale.reshape(-1, 1) if per_channel else encoding.scale
    grid = codes[0] * scale
    # the element that sets each scale keeps it: re-deriving the encoding from the rounded weights changes nothing
    again = weight_encoding(grid, per_channel)
    np.testing.assert_allclose(again.scale, encoding.scale, rtol=1e-6)
    assert np.array_equal(again.quantize(grid), codes[0])
    check = hessian_of(held_out)
    nearest = np.concatenate([encoding.fake_quantize(weight), bias[:, None]], axis=1)[None]
    gptq = np.concatenate([grid, new_bias[0]], axis=1)[None]
    assert output_error(original, gptq, check) < 0.6 * output_error(original, nearest, check)


def test_act_order_is_in_order_rounding_of_the_permuted_columns() -> None:
    k, rows = 12, 5
    inputs = correlated_rows(600, RNG.normal(0, 1, (k, k)) * RNG.uniform(0.1, 3.0, k))
    hessian = hessian_of(inputs)
    original = RNG.normal(0, 1, (1, rows, k + 1))
    encoding = weight_encoding(original[0, :, :k], True)
    codes, bias = gptq_round(original, hessian, encoding, free_columns=1, act_order=True)
    order = np.append(np.argsort(-np.diag(hessian[0])[:k], kind="stable"), k)
    assert not np.array_equal(order, np.arange(k + 1))
    permuted_codes, permuted_bias = gptq_round(original[:, :, order], hessian[:, order][:, :, order], encoding,
                                               free_columns=1)
    assert np.array_equal(codes[:, :, order[:k]], permuted_codes)
    np.testing.assert_array_equal(bias, permuted_bias)


def test_output_error_matches_the_direct_computation() -> None:
    x = np.hstack([RNG.normal(0, 1, (500, 6)), np.ones((500, 1))])
    w, a = RNG.normal(0, 1, (1, 3, 7)), RNG.normal(0, 1, (1, 3, 7))
    direct = np.sum((x @ (w[0] - a[0]).T) ** 2) / np.sum((x @ w[0].T) ** 2)
    assert output_error(w, a, (x.T @ x)[None]) == pytest.approx(direct, rel=1e-9)


def small_model(seed: int = 0) -> onnx.ModelProto:
    """conv3x3 → ReLU6 → depthwise 3x3 → ReLU → conv1x1 → GAP → Gemm."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder("x", 3, 12, 12)
    a = g.relu6(g.conv("x", "c1", rng.normal(0, 0.3, (8, 3, 3, 3)), rng.normal(0, 0.1, 8)), "a1")
    b = g.relu(g.conv(a, "dw", rng.normal(0, 0.4, (8, 1, 3, 3)), rng.normal(0, 0.1, 8), group=8), "a2")
    c = g.conv(b, "pw", rng.normal(0, 0.3, (16, 8, 1, 1)), rng.normal(0, 0.1, 16))
    g.gemm(g.global_avg_pool_flat(c, "pool"), "fc", rng.normal(0, 0.3, (10, 16)), rng.normal(0, 0.1, 10), out="y")
    return g.build("small", [("y", 10)])




@pytest.mark.parametrize(("weights", "step"), [("per-tensor", "gptq"), ("per-channel", "gptq"),
                                               ("per-channel", "gptq:act_order")])
def test_int8_model_holds_exactly_the_gptq_weights(weights: str, step: str) -> None:
    data = images(64)
    state = run_steps(small_model(), StepContext(config_with(f"fold_bn,profile,{step}", weights), data, False))
    qmodel, _ = write_int8(state, weights == "per-channel")
    rounded = GraphIndex.build(state.model)
    stored = {i.name: numpy_helper.to_array(i) for i in qmodel.graph.initializer}
    layers = state.report["gptq"]["layers"]
    assert state.report["gptq"]["column_order"] == ("act_order" if step.endswith("act_order") else "stored")
    assert [row["layer"] for row in layers] == ["c1", "dw", "pw", "fc"]
    assert all(row["gptq_error"] < row["rtn_error"] for row in layers)
    for node in state.model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            name = node.input[1]
            scale = stored[f"{name}.scale"]
            dequantized = stored[f"{name}.int8"] * (scale.reshape(-1, *([1] * (stored[f"{name}.int8"].ndim - 1)))
                                                     if scale.ndim else scale)
            np.testing.assert_array_equal(dequantized.astype(np.float32), rounded.constant(name))


def test_gptq_step_order_is_checked() -> None:
    with pytest.raises(CalibrationError, match="'gptq' must come after 'profile'"):
        check_techniques(config_with("fold_bn,gptq,profile", "per-channel").calibration.techniques)
    with pytest.raises(CalibrationError, match="choose one"):
        check_techniques(config_with("fold_bn,profile,gptq,bias_correction", "per-channel").calibration.techniques)


def test_hessians_see_the_quantized_inputs_the_int8_layers_read() -> None:
    """H of the first conv, through ``with_activation_qdq``, is the Gram of its fake-quantized input's patches."""
    model = small_model()
    data = images(8)
    coarse = activation_encoding(-1.0, 1.0)  # clips and rounds visibly
    hessian = input_hessians(with_activation_qdq(model, {"x": coarse}), ["c1"], data, 4)["c1"]
    node = next(n for n in model.graph.node if n.name == "c1")
    rows = conv_patches(coarse.fake_quantize(data), node, (3, 3))
    rows = np.concatenate([rows, np.ones((*rows.shape[:2], 1), rows.dtype)], axis=2)
    expected = np.matmul(rows.transpose(0, 2, 1).astype(np.float64), rows)
    np.testing.assert_allclose(hessian, expected, rtol=1e-4, atol=1e-3)
    plain = input_hessians(model, ["c1"], data, 4)["c1"]
    assert not np.allclose(plain, expected, rtol=1e-3)  # the quantization is visible in H
