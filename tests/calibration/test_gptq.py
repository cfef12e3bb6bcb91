"""GPTQ weight rounding: the in-graph Hessians against a plain im2col, lower output error than round-to-nearest on
held-out inputs, the int8 model's weights exactly the rounded ones, and the step's order rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from calibration.graph.index import GraphIndex, attribute
from calibration.graph.session import make_session
from calibration.quant.encodings import activation_encoding, weight_encoding
from calibration.quant.simulate import with_activation_qdq
from calibration.rounding import hessian as hessian_module
from calibration.rounding import hessian_graph
from calibration.rounding.gptq import (
    BLOCK,
    TRIANGLE_BLOCK,
    damped,
    gptq_round,
    inverse_cholesky,
    layer_hessians,
    output_errors,
)
from calibration.rounding.hessian import input_hessians
from calibration.rounding.hessian_graph import HessianGraph, Sampling
from calibration.source.models.builder import GraphBuilder
from calibration.steps.runner import run_steps, write_int8
from calibration.steps.state import StepContext
from calibration.steps.techniques import check_techniques
from tests.builders import block_images, config_with, images, mobile_block_model
from workload.errors import CalibrationError

RNG = np.random.default_rng(11)


def reference_patches(x: np.ndarray, group: int, kernel: int, stride: int, pads: tuple[int, ...],
                      dilation: int) -> np.ndarray:
    """A plain-loop im2col, (groups, N·H_out·W_out, C/groups·k·k), columns in the weight's flattened order."""
    top, left, bottom, right = pads
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    n, c, h, w = padded.shape
    span = (kernel - 1) * dilation + 1
    h_out, w_out = (h - span) // stride + 1, (w - span) // stride + 1
    rows = np.empty((group, n, h_out, w_out, c // group, kernel, kernel))
    for i in range(kernel):
        for j in range(kernel):
            window = padded[:, :, i * dilation: i * dilation + stride * (h_out - 1) + 1: stride,
                            j * dilation: j * dilation + stride * (w_out - 1) + 1: stride]
            rows[..., i, j] = window.reshape(n, group, c // group, h_out, w_out).transpose(1, 0, 3, 4, 2)
    return rows.reshape(group, n * h_out * w_out, -1)


CONVOLUTIONS = [  # group, kernel, stride, pads (top, left, bottom, right), dilation, auto_pad
    (1, 3, 1, (1, 1, 1, 1), 1, None),
    (1, 1, 1, (0, 0, 0, 0), 1, None),
    (1, 1, 2, (0, 0, 0, 0), 1, None),  # 1×1 with a stride: patches, not a reshape
    (6, 3, 2, (0, 0, 1, 1), 1, None),  # depthwise, stride 2, TF "same" padding
    (6, 3, 1, (1, 1, 1, 1), 1, None),  # depthwise, MobileNetV2's stride-1 form
    (6, 5, 2, (2, 2, 2, 2), 2, None),  # depthwise 5×5, stride and dilation 2
    (6, 3, 2, (1, 1, 1, 1), 1, "SAME_UPPER"),  # the pads auto_pad gives on 9×9
    (2, 5, 1, (2, 2, 2, 2), 1, None),
    (1, 3, 1, (2, 2, 2, 2), 2, None),
]


def conv_model(w: np.ndarray, group: int, stride: int, pads: tuple[int, ...], dilation: int,
               auto_pad: str | None) -> onnx.ModelProto:
    kernel = w.shape[2]
    padding = {"auto_pad": auto_pad} if auto_pad else {"pads": list(pads)}
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c", kernel_shape=[kernel, kernel],
                            strides=[stride, stride], group=group, dilations=[dilation, dilation], **padding)
    graph = helper.make_graph([node], "c", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("group", "kernel", "stride", "pads", "dilation", "auto_pad", "spatial"),
                         [(*c, True) for c in CONVOLUTIONS]  # depthwise with explicit pads: both forms
                         + [(*c, False) for c in CONVOLUTIONS if c[0] == 6 and c[-1] is None])
def test_in_graph_hessian_is_the_gram_of_the_im2col_rows(group: int, kernel: int, stride: int,
                                                         pads: tuple[int, ...], dilation: int,
                                                         auto_pad: str | None, spatial: bool,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference rows times the weight are ORT's convolution, and the Hessian computed inside ORT (over
    batches) is their augmented Gram matrix, in float64, to 1e-5 relative; depthwise layers with explicit pads
    by both forms, from the patches and from the spatial Gram."""
    monkeypatch.setattr(hessian_graph, "SPATIAL_GRAM_RATIO", 10**6 if spatial else 0)
    channels, out_channels = 6, 6
    x = RNG.normal(0.5, 1, (5, channels, 9, 9)).astype(np.float32)
    w = RNG.normal(0, 1, (out_channels, channels // group, kernel, kernel)).astype(np.float32)
    model = conv_model(w, group, stride, pads, dilation, auto_pad)
    expected = make_session(model).run(None, {"x": x})[0]
    patches = reference_patches(x, group, kernel, stride, pads, dilation)
    grouped = w.reshape(group, out_channels // group, -1)
    got = np.matmul(patches, grouped.transpose(0, 2, 1))  # (groups, N·H·W, out/groups)
    n, _, h, wd = expected.shape
    got = got.reshape(group, n, h, wd, -1).transpose(1, 0, 4, 2, 3).reshape(expected.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    rows = np.concatenate([patches, np.ones((*patches.shape[:2], 1))], axis=2)
    gram = np.matmul(rows.transpose(0, 2, 1), rows)
    hessian = input_hessians(model, ["c"], x, 2, show_progress=False)["c"]
    assert hessian.shape == gram.shape
    np.testing.assert_allclose(hessian, gram, rtol=1e-5, atol=1e-5 * np.abs(gram).max())


def test_gemm_hessian_is_the_gram_of_its_input_rows() -> None:
    x = RNG.normal(0, 1, (7, 5)).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(RNG.normal(0, 1, (3, 5)).astype(np.float32), "w"),
                               numpy_helper.from_array(np.zeros(3, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rows = np.hstack([x.astype(np.float64), np.ones((7, 1))])
    np.testing.assert_allclose(input_hessians(model, ["fc"], x, 3, show_progress=False)["fc"], (rows.T @ rows)[None],
                               rtol=1e-5, atol=1e-5)


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
    gptq_error, nearest_error = output_errors(original, check, gptq, nearest)
    assert gptq_error < 0.6 * nearest_error


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


def column_by_column(weight: np.ndarray, hessian: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ without lazy batches, per-row scales, one free column: every column's error updates all later ones."""
    upper = np.linalg.cholesky(np.linalg.inv(damped(hessian))).transpose(0, 2, 1)
    k = weight.shape[2] - 1
    absolute = np.abs(weight[:, :, :k])
    pinned = np.concatenate([absolute == absolute.max(axis=2, keepdims=True), np.zeros((*weight.shape[:2], 1), bool)],
                            axis=2)
    w = weight.copy()
    codes = np.empty(w[:, :, :k].shape, np.int8)
    for j in range(k):
        q = np.clip(np.round(w[:, :, j : j + 1] / scale), -127, 127)
        codes[:, :, j] = q[:, :, 0]
        error = (w[:, :, j : j + 1] - q * scale) / upper[:, j, j][:, None, None]
        w[:, :, j + 1 :] -= error * upper[:, None, j, j + 1 :]
        w[:, :, j + 1 :] = np.where(pinned[:, :, j + 1 :], weight[:, :, j + 1 :], w[:, :, j + 1 :])
    return codes, w[:, :, k:]


def test_lazy_batch_updates_round_as_column_by_column_gptq() -> None:
    k, rows = 300, 7  # more than two blocks of columns
    hessian = hessian_of(correlated_rows(2000, RNG.normal(0, 1, (k, k)) * RNG.uniform(0.1, 3.0, k)))
    original = RNG.normal(0, 1, (1, rows, k + 1))
    encoding = weight_encoding(original[0, :, :k], True)
    codes, bias = gptq_round(original, hessian, encoding, free_columns=1)
    expected_codes, expected_bias = column_by_column(original, hessian, encoding.scale.reshape(1, -1, 1))
    assert k > 2 * BLOCK
    assert np.array_equal(codes, expected_codes)
    np.testing.assert_allclose(bias, expected_bias, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("k", [7, 2 * TRIANGLE_BLOCK + 45])
def test_inverse_cholesky_is_the_cholesky_factor_of_the_damped_inverse(k: int) -> None:
    hessian = np.stack([hessian_of(correlated_rows(3 * k, RNG.normal(0, 1, (k, k)) * RNG.uniform(0.1, 3.0, k)))[0]
                        for _ in range(2)])
    upper = inverse_cholesky(hessian)
    assert np.array_equal(upper, np.triu(upper)) and np.all(np.diagonal(upper, axis1=1, axis2=2) > 0)
    expected = np.linalg.cholesky(np.linalg.inv(damped(hessian))).transpose(0, 2, 1)
    np.testing.assert_allclose(upper, expected, rtol=0, atol=1e-9 * np.abs(expected).max())


def test_output_error_matches_the_direct_computation() -> None:
    x = np.hstack([RNG.normal(0, 1, (500, 6)), np.ones((500, 1))])
    w, a = RNG.normal(0, 1, (1, 3, 7)), RNG.normal(0, 1, (1, 3, 7))
    direct = np.sum((x @ (w[0] - a[0]).T) ** 2) / np.sum((x @ w[0].T) ** 2)
    assert output_errors(w, (x.T @ x)[None], a) == pytest.approx([direct], rel=1e-9)


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
    rows = reference_patches(coarse.fake_quantize(data), 1, 3, 1, tuple(attribute(node, "pads", [0] * 4)), 1)
    rows = np.concatenate([rows, np.ones((*rows.shape[:2], 1), rows.dtype)], axis=2)
    expected = np.matmul(rows.transpose(0, 2, 1).astype(np.float64), rows)
    np.testing.assert_allclose(hessian, expected, rtol=1e-4, atol=1e-3)
    plain = input_hessians(model, ["c1"], data, 4)["c1"]
    assert not np.allclose(plain, expected, rtol=1e-3)  # the quantization is visible in H


def test_hessians_are_the_grams_of_what_the_fused_int8_layers_read(tmp_path: Path) -> None:
    """The Hessian pass runs the int8 model itself (round-to-nearest weights, ORT's fused int8 kernels): each H is
    the Gram of the dequantized uint8 tensor its layer reads there, and adding the Hessian nodes leaves every
    layer fused."""
    model = mobile_block_model()
    data = block_images(8)
    state = run_steps(model, StepContext(config_with("fold_bn,cle,profile", "per-channel"), data, False))
    assert state.plan is not None
    hessians = layer_hessians(state.model, state.plan, state.activations, data, 4, per_channel=True)
    int8_model, _ = write_int8(state, True)
    index = GraphIndex.build(int8_model)
    layers = {n.name: n for n in int8_model.graph.node if n.name in hessians}
    assert set(layers) == {"c1", "dw", "c3", "c4", "c5", "c6", "fc"}
    readers = {name: index.producer[node.input[0]] for name, node in layers.items()}
    assert all(r.op_type == "DequantizeLinear" for r in readers.values())
    integers = {r.input[0] for r in readers.values()}
    probed = onnx.ModelProto()
    probed.CopyFrom(int8_model)
    probed.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.UINT8, None) for t in sorted(integers))
    session = make_session(probed, optimize=True)
    values = dict(zip(sorted(integers), session.run(sorted(integers), {"input": data})))
    for name, node in layers.items():
        reader = readers[name]
        x = (values[reader.input[0]].astype(np.float64) - index.constant(reader.input[2]).astype(np.float64)) \
            * index.constant(reader.input[1]).astype(np.float64)
        if node.op_type == "Gemm":
            rows = x[None]
        else:
            kernel = index.constant(index.producer[node.input[1]].input[0]).shape[2]
            rows = reference_patches(x, int(attribute(node, "group", 1)), kernel, attribute(node, "strides", [1, 1])[0],
                                     tuple(attribute(node, "pads", [0] * 4)), 1)
        rows = np.concatenate([rows, np.ones((*rows.shape[:2], 1))], axis=2)
        expected = np.matmul(rows.transpose(0, 2, 1), rows)
        np.testing.assert_allclose(hessians[name], expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max(),
                                   err_msg=name)
    builder = HessianGraph(int8_model, dict.fromkeys(layers, Sampling(1, 8, 64)), 4)
    for node in layers.values():
        builder.add(node)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "hessian_pass.onnx")
    ort.InferenceSession(builder.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(options.optimized_model_filepath).graph.node
    assert sum(n.op_type == "QLinearConv" for n in optimized) == 6
    assert not [n.name for n in optimized if n.op_type in ("Conv", "Gemm", "MatMul") and ".hessian" not in n.name]
    integer = [n for n in optimized if n.op_type.startswith(("QLinear", "QGemm", "MatMulInteger"))
               and ".hessian" in n.name]
    assert all(n.op_type == "MatMulInteger" and ".hessian.gram" in n.name for n in integer)
    assert {n.name.split(".hessian")[0] for n in integer} == {"c1", "c3", "c4", "c5", "c6"}  # the dense convolutions


@pytest.mark.parametrize(("low", "high"), [(0.0, 1.0), (-1.0, 1.0)])
def test_integer_grams_are_exact_at_the_extremes_of_the_uint8_range(low: float, high: float) -> None:
    """Dense convolutions' Grams come from MatMulInteger on the uint8 patches: with every product at its largest
    (|q − z| up to 255), where a kernel summing pairs of u8 × s8 products in int16 would saturate, H is still the
    Gram of the dequantized patches; a batch whose sum could overflow int32 takes the float path."""
    encoding = activation_encoding(low, high)
    x = np.where(RNG.random((6, 3, 8, 8)) < 0.9, high, low).astype(np.float32)
    x[:, 0, :2] = RNG.uniform(low, high, (6, 2, 8))
    model = with_activation_qdq(conv_model(RNG.normal(0, 1, (4, 3, 3, 3)).astype(np.float32), 1, 1, (1, 1, 1, 1), 1,
                                           None), {"x": encoding})
    rows = reference_patches(encoding.fake_quantize(x).astype(np.float64), 1, 3, 1, (1, 1, 1, 1), 1)
    rows = np.concatenate([rows, np.ones((*rows.shape[:2], 1))], axis=2)
    expected = np.matmul(rows.transpose(0, 2, 1), rows)
    hessian = input_hessians(model, ["c"], x, 3, show_progress=False, optimize=True)["c"]
    np.testing.assert_allclose(hessian, expected, rtol=1e-6)
    node = next(n for n in model.graph.node if n.name == "c")
    largest = max(int(encoding.zero_point), 255 - int(encoding.zero_point)) ** 2
    for rows_per_image, integer in [(64, True), (2**31 // (4 * largest) + 1, False)]:
        builder = HessianGraph(model, {"c": Sampling(1, 6, rows_per_image)}, 4)
        builder.add(node)
        assert any(n.op_type == "MatMulInteger" for n in builder.model.graph.node) == integer


def test_hessians_sample_positions_of_large_layers_and_images_of_small_ones() -> None:
    """A layer with 4·MIN_ROWS_PER_IMAGE output positions or more sees every second row and column of them, and a
    layer whose Hessian has few columns only the first images that give it ROWS_PER_COLUMN rows per column: H is
    then exactly the Gram of those rows."""
    w = RNG.normal(0, 1, (4, 1, 3, 3)).astype(np.float32)
    model = conv_model(w, 4, 1, (1, 1, 1, 1), 1, None)
    size = 2 * int(np.sqrt(hessian_module.MIN_ROWS_PER_IMAGE))  # 4·MIN_ROWS positions: a step of 2
    x = RNG.normal(0.5, 1, (48, 4, size, size)).astype(np.float32)
    sampled_rows = (size // 2) ** 2
    images_needed = -(-hessian_module.ROWS_PER_COLUMN * 10 // sampled_rows)
    used = 4
    while used < images_needed:
        used *= 2
    assert used < len(x)
    hessian = input_hessians(model, ["c"], x, 4, show_progress=False)["c"]
    patches = reference_patches(x[:used], 4, 3, 1, (1, 1, 1, 1), 1).reshape(4, used, size, size, 9)[:, :, ::2, ::2]
    rows = np.concatenate([patches.reshape(4, -1, 9), np.ones((4, used * sampled_rows, 1))], axis=2)
    expected = np.matmul(rows.transpose(0, 2, 1), rows)
    np.testing.assert_allclose(hessian, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    every = input_hessians(model, ["c"], x, 4, show_progress=False, sample_rows=False)["c"]
    assert every[0, -1, -1] == len(x) * size * size


@pytest.mark.parametrize("block", [4, 5, 7, 64])
def test_blocked_gram_equals_the_whole_one(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dense layer's Gram computed as the blocks on and above the diagonal (halves down to fewer than 2·``block``
    columns) and mirrored is the Gram of its rows, in float and from integers."""
    monkeypatch.setattr(hessian_graph, "GRAM_BLOCK", block)
    x = RNG.normal(0.5, 1, (5, 3, 9, 9)).astype(np.float32)
    model = conv_model(RNG.normal(0, 1, (4, 3, 3, 3)).astype(np.float32), 1, 1, (1, 1, 1, 1), 1, None)
    rows = reference_patches(x, 1, 3, 1, (1, 1, 1, 1), 1)
    rows = np.concatenate([rows, np.ones((*rows.shape[:2], 1))], axis=2)
    expected = np.matmul(rows.transpose(0, 2, 1), rows)
    hessian = input_hessians(model, ["c"], x, 2, show_progress=False)["c"]
    np.testing.assert_allclose(hessian, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_array_equal(hessian, hessian.transpose(0, 2, 1))
    # the integer Grams of a quantized input, by the same blocks
    encoding = activation_encoding(float(x.min()), float(x.max()))
    rows = reference_patches(encoding.fake_quantize(x).astype(np.float64), 1, 3, 1, (1, 1, 1, 1), 1)
    rows = np.concatenate([rows, np.ones((*rows.shape[:2], 1))], axis=2)
    integer = input_hessians(with_activation_qdq(model, {"x": encoding}), ["c"], x, 2, show_progress=False)["c"]
    np.testing.assert_allclose(integer, np.matmul(rows.transpose(0, 2, 1), rows), rtol=1e-6)


def test_depthwise_layers_take_the_spatial_gram_where_it_is_smaller() -> None:
    """A 5×5 depthwise layer on 7×7 inputs takes the spatial Gram (no patch Conv); the same layer on 14×14 inputs,
    whose spatial Gram would have 8× as many entries as its patches per image, and one without known input sizes,
    keep the patches."""
    model = conv_model(RNG.normal(0, 1, (6, 1, 5, 5)).astype(np.float32), 6, 1, (2, 2, 2, 2), 1, None)
    node = model.graph.node[0]
    for size, spatial in [((7, 7), True), ((14, 14), False), (None, False)]:
        rows = None if size is None else size[0] * size[1]
        builder = HessianGraph(model, {"c": Sampling(1, 4, rows, size)}, 4)
        outputs = builder.add(node)
        im2col = [n for n in builder.model.graph.node if n.name.endswith(".im2col")]
        assert (outputs.taps is not None, not im2col) == (spatial, spatial), size
