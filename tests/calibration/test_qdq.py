"""The QDQ writer: it matches a numpy fake-quant reference, and ORT fuses it to int8 kernels."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from calibration.graph.session import make_session
from calibration.quant.encodings import activation_encoding
from calibration.quant.plan import plan_quantization
from calibration.quant.simulate import quantized_weights
from calibration.quant.writer import write_qdq_model
from calibration.source.models.builder import GraphBuilder
from calibration.stats.profile import profile_activations
from calibration.stats.ranges import choose_range
from workload.errors import CalibrationError

RNG = np.random.default_rng(0)


def small_model() -> onnx.ModelProto:
    """input → conv3x3 → ReLU6 → depthwise → ReLU → conv1x1 → + (fork) → GAP → Gemm."""
    g = GraphBuilder("x", 3, 8, 8)
    a = g.relu6(g.conv("x", "c1", RNG.normal(0, 0.5, (8, 3, 3, 3)), RNG.normal(0, 0.5, 8)), "c1.act")
    b = g.relu(g.conv(a, "dw", RNG.normal(0, 0.5, (8, 1, 3, 3)), RNG.normal(0, 0.2, 8), group=8), "dw.act")
    c = g.conv(b, "pw", RNG.normal(0, 0.5, (8, 8, 1, 1)), RNG.normal(0, 0.2, 8))
    d = g.add(a, c, "res")
    e = g.global_avg_pool_flat(d, "pool")
    g.gemm(e, "fc", RNG.normal(0, 0.5, (5, 8)), RNG.normal(0, 0.1, 5), out="y")
    return g.build("small", [("y", 5)])


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, group: int = 1, pad: int = 1) -> np.ndarray:
    """Reference convolution in float64 (stride 1, symmetric padding)."""
    n, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((n, o, h, wd))
    per_group = o // group
    for oc in range(o):
        g0 = (oc // per_group) * cg
        for i in range(kh):
            for j in range(kw):
                out[:, oc] += np.einsum("nchw,c->nhw", xp[:, g0 : g0 + cg, i : i + h, j : j + wd], w[oc, :, i, j])
    return out + b.reshape(1, -1, 1, 1)


def calibrated(model: onnx.ModelProto, per_channel: bool, images: np.ndarray):
    plan = plan_quantization(model)
    stats = profile_activations(model, plan.activations, images, 4, None, show_progress=False)
    bounds = {out: high for out, high in plan.fused.values()}
    encodings = {n: activation_encoding(*choose_range(s, "minmax", 99.9)) for n, s in stats.items()}
    encodings = {n: activation_encoding(float(e.range_min), min(float(e.range_max), bounds.get(n, np.inf)))
                 for n, e in encodings.items()}
    qmodel, params = write_qdq_model(model, plan, encodings, per_channel)
    return plan, encodings, qmodel, params


@pytest.mark.parametrize("per_channel", [True, False])
def test_qdq_matches_numpy_fake_quant_reference(per_channel: bool) -> None:
    model = small_model()
    images = RNG.normal(0, 1, (12, 3, 8, 8)).astype(np.float32)
    plan, enc, qmodel, params = calibrated(model, per_channel, images)
    weights = quantized_weights(model, per_channel)
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}

    def fq(name: str, x: np.ndarray) -> np.ndarray:
        return enc[name].fake_quantize(x.astype(np.float32)).astype(np.float64)

    def layer(name: str, bias_name: str, input_tensor: str) -> tuple[np.ndarray, np.ndarray]:
        w_enc, q = weights[name]
        b_enc = params[bias_name]
        return w_enc.dequantize(q).astype(np.float64), b_enc.fake_quantize(consts[bias_name]).astype(np.float64)

    x = fq("x", images)
    w, b = layer("c1", "c1.bias", "x")
    a = fq("c1.act.out", np.clip(conv2d(x, w, b), 0, 6))
    w, b = layer("dw", "dw.bias", "c1.act.out")
    d = fq("dw.act.out", np.maximum(conv2d(a, w, b, group=8), 0))
    w, b = layer("pw", "pw.bias", "dw.act.out")
    c = fq("pw.out", conv2d(d, w, b, pad=0))
    r = fq("res.out", a + c)
    p = fq("pool.flat", fq("pool.pool", r.mean(axis=(2, 3), keepdims=True)).reshape(len(r), -1))
    w, b = layer("fc", "fc.bias", "pool.flat")
    reference = p @ w.T + b

    got = make_session(qmodel).run(None, {"x": images})[0]
    assert np.abs(got - reference).max() <= 1e-4 * np.abs(reference).max()
    # The int8 weights stored in the model are exactly quantized_weights' ones.
    stored = {i.name: onnx.numpy_helper.to_array(i) for i in qmodel.graph.initializer}
    for name, (_, q) in weights.items():
        assert np.array_equal(stored[f"{name}.weight.int8"], q)
    assert set(plan.fused) == {"c1.act", "dw.act"}


def test_ort_fuses_every_convolution(tmp_path: Path) -> None:
    model = small_model()
    _, _, qmodel, _ = calibrated(model, True, RNG.normal(0, 1, (8, 3, 8, 8)).astype(np.float32))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(qmodel.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    assert ops["QLinearConv"] == 3 and ops["Conv"] == 0, ops
    assert ops["QLinearAdd"] == 1 and ops["Clip"] == 0 and ops["Relu"] == 0, ops


def test_unsupported_operator_is_a_clear_error() -> None:
    model = small_model()
    model.graph.node.insert(1, helper.make_node("Erf", ["c1.out"], ["odd"], name="odd_erf"))
    with pytest.raises(CalibrationError, match="unsupported operator Erf"):
        plan_quantization(model)


def test_unfolded_batch_norm_is_a_clear_error(mobilenetv2_state) -> None:
    from calibration.source.models.mobilenetv2 import build_mobilenetv2

    with pytest.raises(CalibrationError, match="BatchNormalization .* is not folded"):
        plan_quantization(build_mobilenetv2(mobilenetv2_state))


def test_int8_sessions_do_not_saturate_pairs_of_products() -> None:
    """uint8 255 × int8 127 in every input channel: each adjacent pair sums to 64770, past int16. The fused
    QLinearConv that make_session runs must give the exact integer result on every x86 CPU (without VNNI the fast
    kernel saturates such pairs at 32767)."""
    channels = 64
    x_scale, w_scale, y_scale = 1 / 255, 1 / 127, 0.5
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"]),
        helper.make_node("Conv", ["xd", "wd"], ["y"], kernel_shape=[1, 1]),
        helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["out"]),
    ]
    initializers = [
        onnx.numpy_helper.from_array(np.float32(x_scale), "xs"), onnx.numpy_helper.from_array(np.uint8(0), "xz"),
        onnx.numpy_helper.from_array(np.full((1, channels, 1, 1), 127, np.int8), "w"),
        onnx.numpy_helper.from_array(np.float32(w_scale), "ws"), onnx.numpy_helper.from_array(np.int8(0), "wz"),
        onnx.numpy_helper.from_array(np.float32(y_scale), "ys"), onnx.numpy_helper.from_array(np.uint8(0), "yz"),
    ]
    graph = helper.make_graph(nodes, "pairs", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                             [1, channels, 4, 4])],
                              [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 1, 4, 4])],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    session = make_session(model, optimize=True)
    out = session.run(None, {"x": np.ones((1, channels, 4, 4), np.float32)})[0]
    exact = min(round(255 * 127 * channels * x_scale * w_scale / y_scale), 255) * y_scale  # 64 · 1 = 64 → q 128
    np.testing.assert_array_equal(out, np.full_like(out, exact))
