"""CLE set search, scale math, ReLU6 modes and high-bias absorption on small synthetic models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibration.graph.index import GraphIndex
from calibration.graph.outputs import with_outputs
from calibration.graph.session import make_session
from calibration.quant.plan import plan_quantization
from calibration.source.models.builder import GraphBuilder
from calibration.stats.channels import channel_ranges, profile_channels
from calibration.stats.profile import profile_activations
from calibration.transforms.cle.driver import equalize
from calibration.transforms.cle.scales import (
    MAX_LOG_SCALE,
    activation_aware_scales,
    fusable_scales,
    input_channel_ranges,
    output_channel_ranges,
    pair_scales,
    triplet_scales,
)
from calibration.transforms.cle.sets import find_cle_sets, link_tensors
from calibration.transforms.fold import FoldedBN, fold_batch_norms
from calibration.transforms.high_bias import absorb_high_biases
from calibration.transforms.relu6 import relu6_to_relu
from tests.builders import block_bn_state, block_images, mobile_block_model
from workload.errors import CalibrationError

RTOL = 1e-5


def _run(model: onnx.ModelProto, x: np.ndarray, outputs: list[str] | None = None) -> list[np.ndarray]:
    if outputs is not None:
        model = with_outputs(model, outputs)
    return make_session(model).run(None, {"input": x})


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _folded():
    model = mobile_block_model()
    folded_model, folded, skipped = fold_batch_norms(model)
    assert not skipped
    return model, folded_model, {f.layer: f for f in folded}


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    index = GraphIndex.build(model)
    return {n.name: index.constant(n.input[1]) for n in model.graph.node if n.op_type == "Conv"}


def test_set_search_finds_pairs_triplets_and_stops_at_forks():
    _, folded_model, _ = _folded()
    sets, skipped = find_cle_sets(folded_model)
    assert [s.layers for s in sets] == [("c1", "dw", "c3"), ("c3", "c4"), ("c4", "c5")]
    assert [[link.kind for link in s.links] for s in sets] == [["clip", "clip"], ["none"], ["relu"]]
    assert [s.layers for s in skipped] == [("c5", "c6")]
    assert "fork" in skipped[0].reason


@pytest.mark.parametrize("option", ["exact", "skip", "iterate", "activation_aware", "fused",
                                    "activation_aware_fused"])
def test_fold_and_cle_preserve_the_float_function(option: str):
    model, folded_model, folded = _folded()
    x = block_images()
    reference = _run(model, x)[0]
    assert _rel_err(_run(folded_model, x)[0], reference) < RTOL
    ranges = None
    if "aware" in option or "fused" in option:
        stats = profile_channels(folded_model, link_tensors(folded_model), block_images(8, 2), 4, False)
        ranges = channel_ranges(stats)
    relu6 = "skip" if option == "skip" else "fused" if "fused" in option else "exact"
    result = equalize(folded_model, folded, relu6=relu6, iterate=option == "iterate", channel_ranges=ranges,
                      activation_aware="aware" in option)
    assert _rel_err(_run(result.model, x)[0], reference) < RTOL
    assert result.report["sets"], "nothing was scaled"
    if option == "skip":
        assert [s["layers"] for s in result.report["sets"]] == [["c3", "c4"], ["c4", "c5"]]
        assert any("relu6 mode 'skip'" in s["reason"] for s in result.report["skipped"])
    else:  # exact ReLU6 became Relu → Min with per-channel bounds 6/s
        assert sum(n.op_type == "Min" for n in result.model.graph.node) == 2


def test_pair_and_triplet_ranges_become_equal():
    _, folded_model, folded = _folded()
    before = _weights(folded_model)
    after = _weights(equalize(folded_model, folded).model)
    # Triplet (c1, dw, c3): all three ranges become (r0·r1·r2)^(1/3) of the original weights.
    target = np.cbrt(output_channel_ranges(before["c1"]) * output_channel_ranges(before["dw"])
                     * input_channel_ranges(before["c3"], False))
    np.testing.assert_allclose(output_channel_ranges(after["c1"]), target, rtol=RTOL)
    np.testing.assert_allclose(output_channel_ranges(after["dw"]), target, rtol=RTOL)
    # c3's input ranges were equalized before the pair (c3, c4) rescaled its outputs, so check
    # the pairs themselves, which are the last sets to touch their ranges.
    np.testing.assert_allclose(output_channel_ranges(after["c4"]), input_channel_ranges(after["c5"], False),
                               rtol=RTOL)


def test_iterating_equalizes_every_set_at_once():
    _, folded_model, folded = _folded()
    result = equalize(folded_model, folded, iterate=True)
    w = _weights(result.model)
    assert result.report["passes"] > 1
    np.testing.assert_allclose(output_channel_ranges(w["c1"]), output_channel_ranges(w["dw"]), rtol=1e-3)
    np.testing.assert_allclose(output_channel_ranges(w["dw"]), input_channel_ranges(w["c3"], False), rtol=1e-3)
    np.testing.assert_allclose(output_channel_ranges(w["c3"]), input_channel_ranges(w["c4"], False), rtol=1e-3)
    np.testing.assert_allclose(output_channel_ranges(w["c4"]), input_channel_ranges(w["c5"], False), rtol=1e-3)


def test_residual_fork_is_not_scaled():
    _, folded_model, folded = _folded()
    result = equalize(folded_model, folded, iterate=True)
    np.testing.assert_array_equal(_weights(result.model)["c6"], _weights(folded_model)["c6"])
    x = block_images()
    fork_before = _run(folded_model, x, ["c5.bn.out"])[0]
    fork_after = _run(result.model, x, ["c5.bn.out"])[0]
    assert _rel_err(fork_after, fork_before) < RTOL


def test_scale_math_guards_zero_and_non_finite_ranges():
    r1 = np.array([4.0, 0.0, 1.0, np.inf])
    r2 = np.array([1.0, 2.0, 0.0, 1.0])
    np.testing.assert_array_equal(pair_scales(r1, r2), [2.0, 1.0, 1.0, 1.0])
    s1, s2 = triplet_scales(np.array([8.0, 0.0]), np.array([1.0, 1.0]), np.array([1.0, 1.0]))
    np.testing.assert_allclose(s1, [4.0, 1.0])
    np.testing.assert_allclose(s2, [2.0, 1.0])  # ranges 8/4 = 1·4/2 = 1·2 = 2


def test_activation_aware_without_activations_is_plain_cle_up_to_a_uniform_factor():
    rng = np.random.default_rng(3)
    r1, r2 = rng.uniform(0.5, 5, 16), rng.uniform(0.5, 5, 16)  # above the floor (a tenth of the median)
    (aware,) = activation_aware_scales([(r1, (-1,)), (r2, (1,))])
    ratio = aware / pair_scales(r1, r2)
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9)


def test_activation_aware_scales_are_clamped_and_dead_channels_floored():
    r = np.ones(4)
    (s,) = activation_aware_scales([(np.array([1.0, 1.0, 1.0, np.exp(20.0)]), (-1,)), (r, (1,))])
    assert np.all(np.abs(np.log(s)) <= MAX_LOG_SCALE + 1e-12)
    assert np.isclose(np.log(s[3]), MAX_LOG_SCALE)
    # A near-dead activation channel counts as a tenth of the median, not as 1e-9.
    (dead,) = activation_aware_scales([(r, (-1,)), (np.array([1.0, 1.0, 1.0, 1e-9]), (-1,)), (r, (1,))])
    (tenth,) = activation_aware_scales([(r, (-1,)), (np.array([1.0, 1.0, 1.0, 0.1]), (-1,)), (r, (1,))])
    np.testing.assert_allclose(dead, tenth, rtol=1e-12)
    assert np.abs(np.log(dead)).max() < MAX_LOG_SCALE


def test_fusable_scales_keep_every_bound_at_or_above_the_largest_value():
    rng = np.random.default_rng(5)
    bound = np.full(32, 6.0)
    maxima = np.minimum(rng.uniform(0.1, 8.0, 32), bound)  # values are clipped at their bound
    maxima[0] = 0.0  # a dead channel
    s = np.exp(rng.uniform(-3, 3, 32))
    limited = fusable_scales(s, bound, maxima)
    assert np.all(limited <= s)
    top = np.max(maxima / limited)
    assert np.all(bound / limited >= top * (1 - 1e-12))
    assert np.isclose(top, np.max(maxima / s))  # lowering a scale never raises the tensor's largest value
    kept = bound / s >= np.max(maxima / s)
    np.testing.assert_array_equal(limited[kept], s[kept])  # scales that already fit are untouched
    zero_bound = bound.copy()
    zero_bound[3] = 0.0  # a channel clipped to zero is constant and keeps its scale
    assert fusable_scales(s, zero_bound, np.minimum(maxima, zero_bound))[3] == s[3]


def test_fused_relu6_needs_calibration_statistics():
    _, folded_model, folded = _folded()
    with pytest.raises(CalibrationError, match="per-channel statistics"):
        equalize(folded_model, folded, relu6="fused")


def _clip_model(form: str) -> onnx.ModelProto:
    """conv → Clip(0, 6) → conv, with the Clip bounds as attributes, Constant nodes or initializers."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3, 1, 1)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(size=(2, 4, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["input", "w1"], ["t1"], name="c1")]
    if form == "attributes":
        nodes.append(helper.make_node("Clip", ["t1"], ["t2"], name="clip", min=0.0, max=6.0))
    elif form == "constant_nodes":
        for name, value in (("lo", 0.0), ("hi", 6.0)):
            nodes.append(helper.make_node("Constant", [], [name], name=name,
                                          value=numpy_helper.from_array(np.array(value, np.float32), name)))
        nodes.append(helper.make_node("Clip", ["t1", "lo", "hi"], ["t2"], name="clip"))
    else:
        inits += [numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
                  numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
        nodes.append(helper.make_node("Clip", ["t1", "lo", "hi"], ["t2"], name="clip"))
    nodes.append(helper.make_node("Conv", ["t2", "w2"], ["out"], name="c2"))
    graph = helper.make_graph(nodes, "clip", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10 if form == "attributes" else 17)])
    model.ir_version = 5 if form == "attributes" else 8
    return model


@pytest.mark.parametrize("form", ["attributes", "constant_nodes", "initializers"])
def test_every_clip_form_is_recognised(form: str):
    model = _clip_model(form)
    (cle_set,), skipped = find_cle_sets(model)
    assert not skipped
    assert cle_set.links[0].kind == "clip" and cle_set.links[0].bound == 6.0
    x = np.random.default_rng(5).normal(size=(1, 3, 4, 4)).astype(np.float32) * 10
    result = equalize(model, {})
    assert _rel_err(_run(result.model, x)[0], _run(model, x)[0]) < RTOL
    replaced, replaced_names, kept = relu6_to_relu(model)
    assert replaced_names == ["clip"] and not kept
    assert [n.op_type for n in replaced.graph.node if n.op_type in ("Clip", "Relu")] == ["Relu"]


def test_a_clip_that_is_not_relu6_is_reported():
    model = _clip_model("initializers")
    index = GraphIndex.build(model)
    index.set_constant("lo", np.array(-1.0, np.float32))
    sets, skipped = find_cle_sets(model)
    assert not sets
    assert skipped[0].layers == ("c1", "c2") and "Clip(-1, 6)" in skipped[0].reason


def test_relu6_to_relu_changes_the_function_only_above_six():
    model = _clip_model("initializers")
    replaced, _, _ = relu6_to_relu(model)
    small = np.random.default_rng(6).uniform(0, 0.1, (1, 3, 4, 4)).astype(np.float32)
    w1 = GraphIndex.build(model).constant("w1")
    assert np.abs(w1).sum(axis=1).max() * 0.1 < 6  # pre-activations stay below 6
    assert _rel_err(_run(replaced, small)[0], _run(model, small)[0]) < RTOL
    large = small * 1000
    assert _rel_err(_run(replaced, large)[0], _run(model, large)[0]) > 1e-2


def _high_bias_model(relu6: bool) -> onnx.ModelProto:
    """c1 (1×1) → BN with a large β → Relu or ReLU6 → c2 (1×1) → c3 (1×1): exact absorption."""
    rng = np.random.default_rng(7)
    b = GraphBuilder("input", 3, 5, 5)
    y = b.conv("input", "c1", rng.normal(size=(4, 3, 1, 1)) * 0.1, rng.normal(size=4) * 0.1)
    state = {"bn1.weight": np.array([0.5, -0.3, 0.4, 2.0]), "bn1.bias": np.array([10.0, 4.0, -1.0, 1.0]),
             "bn1.running_mean": np.zeros(4), "bn1.running_var": np.ones(4)}
    y = b.batch_norm(y, "bn1", state, 0.0)
    y = b.relu6(y, "act") if relu6 else b.relu(y, "act")
    y = b.conv(y, "c2", rng.normal(size=(3, 4, 1, 1)), rng.normal(size=3))
    y = b.batch_norm(y, "bn2", block_bn_state("bn2", 3, rng, beta_scale=5.0), 1e-5)
    y = b.conv(y, "c3", rng.normal(size=(2, 3, 1, 1)), rng.normal(size=2))
    return b.build("hba", [(b.global_avg_pool_flat(y, "head"), 2)])


@pytest.mark.parametrize("relu6", [False, True])
def test_high_bias_absorption_is_exact_where_no_preactivation_falls_below_c(relu6: bool):
    model = _high_bias_model(relu6)
    folded_model, folded_list, _ = fold_batch_norms(model)
    folded = {f.layer: f for f in folded_list}
    cle = equalize(folded_model, folded)  # scales β, γ; ReLU6 becomes exact per-channel Min
    before = _weights(cle.model)
    index = GraphIndex.build(cle.model)
    b1, b2, b3 = (index.constant(n.input[2]) for n in cle.model.graph.node if n.op_type == "Conv")
    result = absorb_high_biases(cle.model, cle.folded)

    bn1, bn2 = cle.folded["c1"], cle.folded["c2"]
    c1 = np.maximum(0.0, bn1.beta - 3 * np.abs(bn1.gamma))
    if relu6:  # at most the per-channel bound 6/s, which then drops by c
        minimum = next(n for n in cle.model.graph.node if n.op_type == "Min")
        bound = index.constant(minimum.input[1]).reshape(-1)
        c1 = np.minimum(c1, bound)
    c2 = bn2.beta  # no activation between c2 and c3: all of β moves
    assert c1[0] > 0 and c1[2] == 0  # channel 0 has a high bias, channel 2 a negative one
    index = GraphIndex.build(result.model)
    nb1, nb2, nb3 = (index.constant(n.input[2]) for n in result.model.graph.node if n.op_type == "Conv")
    shift2 = before["c2"].sum(axis=(2, 3)) @ c1
    np.testing.assert_allclose(nb1, b1 - c1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(nb2, b2 + shift2 - (c2 + shift2), atol=1e-4)  # c2 absorbs its shifted β
    np.testing.assert_allclose(nb3, b3 + before["c3"].sum(axis=(2, 3)) @ (c2 + shift2), rtol=1e-5, atol=1e-4)
    if relu6:
        minimum = next(n for n in result.model.graph.node if n.op_type == "Min")
        np.testing.assert_allclose(index.constant(minimum.input[1]).reshape(-1), bound - c1, rtol=1e-6, atol=1e-6)
    assert [a["activation"] for a in result.report["absorbed"]] == [("relu_min" if relu6 else "relu"), "none"]
    np.testing.assert_allclose(result.report["absorbed"][0]["total"], c1.sum(), rtol=1e-6)

    x = np.random.default_rng(8).uniform(0, 1, (4, 3, 5, 5)).astype(np.float32)
    pre = _run(cle.model, x, ["bn1.out"])[0] if not relu6 else None
    if pre is not None:
        c = c1.reshape(1, -1, 1, 1)
        assert np.all((pre >= c) | (c == 0))  # the data satisfy the exactness condition
    assert _rel_err(_run(result.model, x)[0], _run(model, x)[0]) < RTOL
    assert isinstance(result.folded["c1"], FoldedBN)
    np.testing.assert_allclose(result.folded["c1"].beta, bn1.beta - c1, rtol=1e-6)


def test_cle_steps_must_sit_between_fold_bn_and_profile():
    from calibration.steps.techniques import check_techniques
    from workload.config import parse_technique
    from workload.errors import WorkloadError

    steps = lambda text: tuple(parse_technique(t, "TECHNIQUES") for t in text.split(","))  # noqa: E731
    check_techniques(steps("fold_bn,relu6_to_relu,cle:activation_aware,high_bias_absorption,profile"))
    with pytest.raises(CalibrationError, match="'cle' must come before 'profile'"):
        check_techniques(steps("fold_bn,profile,cle"))
    with pytest.raises(CalibrationError, match="'high_bias_absorption' must come after 'fold_bn'"):
        check_techniques(steps("high_bias_absorption,fold_bn,profile"))
    with pytest.raises(WorkloadError, match="does not take option"):
        check_techniques(steps("cle:sideways"))


def test_high_bias_absorption_skips_layers_that_zero_pad_their_input():
    _, folded_model, folded = _folded()
    result = absorb_high_biases(folded_model, folded)
    skipped = {tuple(s["layers"]): s["reason"] for s in result.report["skipped"]}
    absorbed = [tuple(a["layers"]) for a in result.report["absorbed"]]
    assert "zero-pads" in skipped[("c1", "dw")] and "zero-pads" in skipped[("c4", "c5")]
    assert "scalar Clip" in skipped[("dw", "c3")]
    assert absorbed == [("c3", "c4")]  # into a 1×1 conv with no activation between: all of β, exactly
    x = block_images()
    assert _rel_err(_run(result.model, x)[0], _run(folded_model, x)[0]) < RTOL


@pytest.mark.parametrize("option", ["exact", "skip", "iterate", "activation_aware_fused"])
def test_profile_statistics_follow_from_the_channel_statistics_before_cle(option: str):
    """Every tensor profile quantizes, in the equalized model, has the statistics that the per-channel minima and
    maxima of the folded model give with CLE's divisors: one pass serves both CLE and profile."""
    _, folded_model, folded = _folded()
    data = block_images(8, 5)
    plan = plan_quantization(folded_model)
    tensors = [*plan.activations, *plan.outputs]
    before = profile_channels(folded_model, [*tensors, *link_tensors(folded_model)], data, 4, False)
    relu6 = "skip" if option == "skip" else "fused" if "fused" in option else "exact"
    result = equalize(folded_model, folded, relu6=relu6, iterate=option == "iterate",
                      channel_ranges=channel_ranges(before), activation_aware="aware" in option)
    assert result.divisors and all(np.any(d != 1.0) for d in result.divisors.values())
    assert set(result.divisors) <= set(tensors) | {t for n in folded_model.graph.node for t in n.output}
    equalized_plan = plan_quantization(result.model)
    assert [*equalized_plan.activations, *equalized_plan.outputs] == tensors
    direct = profile_activations(result.model, tensors, data, 4, None, False)
    for name in tensors:
        derived = before[name].tensor_stats(result.divisors.get(name))
        got = [derived.minimum, derived.maximum, derived.mean_min, derived.mean_max]
        expected = [direct[name].minimum, direct[name].maximum, direct[name].mean_min, direct[name].mean_max]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=name)
