"""The int8 form of CLE's exact ReLU6: a Min on uint8 that keeps every convolution fused."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from calibration.graph.session import make_session
from calibration.quant.encodings import activation_encoding
from calibration.quant.plan import plan_quantization
from calibration.quant.writer import write_qdq_model
from calibration.stats.channels import channel_ranges, profile_channels
from calibration.stats.profile import profile_activations
from calibration.stats.ranges import choose_range
from calibration.transforms.cle.driver import equalize
from calibration.transforms.cle.sets import link_tensors
from calibration.transforms.fold import fold_batch_norms
from tests.builders import block_images, mobile_block_model


def _exact_cle_model() -> onnx.ModelProto:
    folded_model, folded, _ = fold_batch_norms(mobile_block_model())
    return equalize(folded_model, {f.layer: f for f in folded}).model


def _encodings(model: onnx.ModelProto, tensors: list[str], cap: float | None = None):
    stats = profile_activations(model, tensors, block_images(8, 3), 4, None, show_progress=False)
    encodings = {}
    for name, s in stats.items():
        low, high = choose_range(s, "minmax", 99.9)
        encodings[name] = activation_encoding(low, high if cap is None else min(high, cap))
    return encodings


def test_exact_relu6_min_runs_on_uint8_and_equals_the_float_min_form():
    model = _exact_cle_model()
    plan = plan_quantization(model)
    assert len(plan.integer_min) == 2
    encodings = _encodings(model, plan.activations)
    qmodel, _ = write_qdq_model(model, plan, encodings, per_channel=False)
    mins = [n for n in qmodel.graph.node if n.op_type == "Min"]
    assert len(mins) == 2 and all(n.input[0].endswith(".input_quantized") for n in mins)

    # Reference: Min in float between DQ and Q, its input quantized with the output's encoding.
    reference_plan = replace(plan, integer_min={}, activations=[*plan.activations, *plan.integer_min.values()])
    shared = {source: encodings[next(n.output[0] for n in model.graph.node if n.name == min_node)]
              for min_node, source in plan.integer_min.items()}
    reference, _ = write_qdq_model(model, reference_plan, {**encodings, **shared}, per_channel=False)
    x = block_images(5, 9)
    np.testing.assert_allclose(make_session(qmodel).run(None, {"input": x})[0],
                               make_session(reference).run(None, {"input": x})[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("cap", [None, 1e-3])
def test_every_convolution_stays_fused(cap: float | None):
    model = _exact_cle_model()
    plan = plan_quantization(model)
    qmodel, _ = write_qdq_model(model, plan, _encodings(model, plan.activations, cap), per_channel=True)
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(qmodel.SerializeToString(), options, providers=["CPUExecutionProvider"])
        ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert "Conv" not in ops
    assert ops.count("QLinearConv") == sum(n.op_type == "Conv" for n in model.graph.node)
    # A tiny range puts every bound at or above 255: the Q/DQ clamp alone is exact, the Min goes.
    assert ops.count("Min") == (0 if cap is not None else 2)


def test_fused_relu6_needs_no_min_in_the_int8_model():
    """Fused CLE keeps the float function (exact Min in float) but every bound sits at or above the
    int8 range profiled on the same images, so the writer drops every Min and all layers fuse."""
    folded_model, folded, _ = fold_batch_norms(mobile_block_model())
    images = block_images(8, 3)
    ranges = channel_ranges(profile_channels(folded_model, link_tensors(folded_model), images, 4, False))
    stats = {f.layer: f for f in folded}
    exact = equalize(folded_model, stats, channel_ranges=ranges).model
    fused = equalize(folded_model, stats, relu6="fused", channel_ranges=ranges).model
    for model, mins in ((exact, 2), (fused, 0)):
        plan = plan_quantization(model)
        assert len(plan.integer_min) == 2  # the float model keeps its per-channel Min either way
        qmodel, _ = write_qdq_model(model, plan, _encodings(model, plan.activations), per_channel=False)
        assert sum(n.op_type == "Min" for n in qmodel.graph.node) == mins
