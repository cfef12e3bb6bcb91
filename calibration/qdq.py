"""The int8 QDQ model, written from our encodings (the single source of truth).

Layout, chosen so that ONNX Runtime fuses every convolution into QLinearConv:
- every activation tensor gets one QuantizeLinear→DequantizeLinear pair (uint8) right after its
  producer, shared by all consumers;
- a Relu, or a Clip(0, c), that is the only consumer of a Conv/Gemm/Add output is folded into the
  quantization of that output: the uint8 encoding starts at 0 and ends at or below c, so the
  Q/DQ pair clamps exactly as the activation did;
- a Min against non-negative per-channel bounds that follows such a folded Relu (CLE's exact
  ReLU6, min(ReLU(x), 6/s_i)) runs on the uint8 tensor: its input and output share one encoding,
  and quantization is monotone, so Q(min(x, t)) = min(Q(x), Q(t)) exactly, and the producing
  convolution stays fused; when every Q(t) is 255 the Q/DQ clamp alone is exact and the Min goes;
- weights are int8 initializers behind a DequantizeLinear (per-channel on the output axis, or per
  tensor), biases int32 with scale s_in·s_w;
- graph outputs stay float.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from calibration.encodings import Encoding, bias_encoding, quantize_weight
from calibration.errors import CalibrationError
from calibration.graph import GraphIndex, attribute, drop_unused_initializers, input_name, remove_nodes

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
# Ops whose float outputs are quantized like any activation.
QUANTIZED_OPS = (*WEIGHTED_OPS, "Add", "Mul", "Concat", "GlobalAveragePool", "AveragePool", "MaxPool",
                 "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Relu", "Clip", "Pad",
                 "ReduceMean", "Min", "Max")
FUSABLE_PRODUCERS = ("Conv", "Gemm", "Add")
# Ops that may consume dequantized tensors and produce float outputs (the model's head).
FLOAT_HEAD_OPS = ("Softmax", "ArgMax", "Identity", "Cast")


@dataclass
class QuantPlan:
    """Which tensors get uint8 encodings, and which activations fold into their producer's Q/DQ."""

    activations: list[str] = field(default_factory=list)
    fused: dict[str, tuple[str, float]] = field(default_factory=dict)  # activation node -> (out, clip max)
    weighted: list[str] = field(default_factory=list)  # weighted layer node names
    integer_min: dict[str, str] = field(default_factory=dict)  # Min node -> its input (a folded Relu's output)


def constant_min_bound(node: onnx.NodeProto, index: GraphIndex) -> str | None:
    """The initializer operand of a two-input Min against non-negative bounds, if it has one."""
    if node.op_type != "Min" or len(node.input) != 2:
        return None
    for name in node.input:
        if name in index.initializers and np.all(index.constant(name) >= 0):
            return name
    return None


def _fusable_upper_bound(node: onnx.NodeProto, index: GraphIndex) -> float | None:
    """``inf`` for Relu, c for Clip(0, c); None when the activation cannot fold into a uint8 encoding."""
    if node.op_type == "Relu":
        return float("inf")
    if node.op_type != "Clip":
        return None
    low, high = clip_bounds(node, index)
    return high if low == 0.0 and np.isfinite(high) else None


def clip_bounds(node: onnx.NodeProto, index: GraphIndex) -> tuple[float, float]:
    """A Clip's (min, max) from attributes (opset < 11), Constant inputs or initializer inputs."""
    low = attribute(node, "min", -np.inf)
    high = attribute(node, "max", np.inf)
    for position, name in ((1, "min"), (2, "max")):
        if len(node.input) > position and node.input[position]:
            tensor = node.input[position]
            if not index.is_constant(tensor):
                raise CalibrationError(f"Clip '{node.name}': its {name} is not a constant")
            value = float(index.constant(tensor).reshape(-1)[0])
            low, high = (value, high) if position == 1 else (low, value)
    return float(low), float(high)


def plan_quantization(model: onnx.ModelProto) -> QuantPlan:
    index = GraphIndex.build(model)
    outputs = index.graph_outputs()
    plan = QuantPlan(activations=[input_name(model)])
    absorbed: set[str] = set()
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        if node.op_type == "BatchNormalization":
            raise CalibrationError(f"BatchNormalization '{node.name}' is not folded; put fold_bn before profile")
        if node.op_type not in QUANTIZED_OPS and node.op_type not in FLOAT_HEAD_OPS:
            raise CalibrationError(f"unsupported operator {node.op_type} (node '{node.name}')")
        if node.op_type in WEIGHTED_OPS:
            if not index.is_constant(node.input[1]):
                raise CalibrationError(f"{node.op_type} '{node.name}' has a non-constant weight")
            plan.weighted.append(node.name)
        if node.op_type in FLOAT_HEAD_OPS:
            continue
        out = node.output[0]
        consumer = index.single_consumer(out)
        if (node.name in plan.fused and consumer is not None and consumer.output[0] not in outputs
                and constant_min_bound(consumer, index) is not None):
            plan.integer_min[consumer.name] = out
            continue
        bound = _fusable_upper_bound(consumer, index) if consumer is not None else None
        if node.op_type in FUSABLE_PRODUCERS and consumer is not None and bound is not None:
            plan.fused[consumer.name] = (consumer.output[0], bound)
            absorbed.add(out)
            continue
        if out not in outputs and out not in absorbed:
            plan.activations.append(out)
    return plan


def _add_initializer(model: onnx.ModelProto, name: str, value: np.ndarray) -> str:
    model.graph.initializer.append(numpy_helper.from_array(value, name))
    return name


def _qdq_pair(model: onnx.ModelProto, tensor: str, encoding: Encoding) -> tuple[list[onnx.NodeProto], str]:
    scale = _add_initializer(model, f"{tensor}.scale", encoding.scale.astype(np.float32))
    zero = _add_initializer(model, f"{tensor}.zero_point", encoding.zero_point.astype(np.uint8))
    quantized, dequantized = f"{tensor}.quantized", f"{tensor}.dequantized"
    nodes = [
        helper.make_node("QuantizeLinear", [tensor, scale, zero], [quantized], name=f"{tensor}.QuantizeLinear"),
        helper.make_node("DequantizeLinear", [quantized, scale, zero], [dequantized],
                         name=f"{tensor}.DequantizeLinear"),
    ]
    return nodes, dequantized


def _quantize_outputs(model: onnx.ModelProto, tensors: Sequence[str], activations: dict[str, Encoding],
                      rename: dict[str, str]) -> list[onnx.NodeProto]:
    """Q/DQ pairs for the encoded ``tensors``, recording each one's dequantized copy in ``rename``."""
    nodes: list[onnx.NodeProto] = []
    for tensor in tensors:
        if tensor in activations:
            pairs, rename[tensor] = _qdq_pair(model, tensor, activations[tensor])
            nodes.extend(pairs)
    return nodes


def _read_dequantized(node: onnx.NodeProto, rename: dict[str, str]) -> None:
    """Point ``node``'s inputs at the dequantized copies of encoded tensors."""
    for i, name in enumerate(node.input):
        if name in rename:
            node.input[i] = rename[name]


def _integer_min(model: onnx.ModelProto, index: GraphIndex, node: onnx.NodeProto, source: str,
                 encoding: Encoding) -> list[onnx.NodeProto]:
    """Q(source) → Min against uint8 bounds → DQ, all with the Min output's encoding."""
    out = node.output[0]
    thresholds = encoding.quantize(index.constant(constant_min_bound(node, index)))
    scale = _add_initializer(model, f"{out}.scale", encoding.scale.astype(np.float32))
    zero = _add_initializer(model, f"{out}.zero_point", encoding.zero_point.astype(np.uint8))
    clamp = bool(np.any(thresholds < encoding.qmax))
    quantized_in = f"{out}.input_quantized" if clamp else f"{out}.quantized"
    nodes = [helper.make_node("QuantizeLinear", [source, scale, zero], [quantized_in],
                              name=f"{out}.QuantizeLinear")]
    if clamp:
        bound = _add_initializer(model, f"{out}.bound_quantized", thresholds)
        nodes.append(helper.make_node("Min", [quantized_in, bound], [f"{out}.quantized"], name=node.name))
    nodes.append(helper.make_node("DequantizeLinear", [f"{out}.quantized", scale, zero], [f"{out}.dequantized"],
                                  name=f"{out}.DequantizeLinear"))
    return nodes


def weight_axis(node: onnx.NodeProto) -> int:
    """The weight's output-channel axis: 0 for Conv and Gemm(transB=1), 1 for MatMul and Gemm(transB=0)."""
    if node.op_type == "Conv" or (node.op_type == "Gemm" and attribute(node, "transB", 0) == 1):
        return 0
    return 1


def quantized_weights(model: onnx.ModelProto, per_channel: bool) -> dict[str, tuple[Encoding, np.ndarray]]:
    """Each weighted layer's int8 weight and encoding, exactly as ``write_qdq_model`` stores them."""
    index = GraphIndex.build(model)
    result = {}
    for node in model.graph.node:
        if node.op_type in WEIGHTED_OPS and index.is_constant(node.input[1]):
            weight = index.constant(node.input[1])
            axis = weight_axis(node)
            moved = np.moveaxis(weight, axis, 0)
            encoding, q = quantize_weight(moved, per_channel)
            if encoding.axis is not None:
                encoding = Encoding(encoding.scale, encoding.zero_point, encoding.dtype, axis)
            result[node.name] = (encoding, np.moveaxis(q, 0, axis))
    return result


def write_qdq_model(model: onnx.ModelProto, plan: QuantPlan, activations: dict[str, Encoding],
                    per_channel: bool) -> tuple[onnx.ModelProto, dict[str, Encoding]]:
    """The QDQ model and the parameter encodings it uses (weights and biases)."""
    qmodel = onnx.ModelProto()
    qmodel.CopyFrom(model)
    index = GraphIndex.build(qmodel)
    params: dict[str, Encoding] = {}
    weights = quantized_weights(qmodel, per_channel)

    # Fold fusable activations: the producer writes the activation's output tensor directly.
    fused_nodes = [n for n in qmodel.graph.node if n.name in plan.fused]
    for act in fused_nodes:
        producer = index.producer[act.input[0]]
        producer.output[0] = act.output[0]
    remove_nodes(qmodel, fused_nodes)

    rename: dict[str, str] = {}  # encoded tensor -> its dequantized copy, which consumers read
    new_nodes = _quantize_outputs(qmodel, [input_name(qmodel)], activations, rename)
    for node in qmodel.graph.node:
        if node.name in plan.integer_min:
            out = node.output[0]
            new_nodes.extend(_integer_min(qmodel, index, node, plan.integer_min[node.name], activations[out]))
            rename[out] = f"{out}.dequantized"
            continue
        source = node.input[0] if node.input else ""
        _read_dequantized(node, rename)
        if node.name in weights:
            encoding, q = weights[node.name]
            weight_name = node.input[1]
            q_name = _add_initializer(qmodel, f"{weight_name}.int8", q)
            scale = _add_initializer(qmodel, f"{weight_name}.scale", encoding.scale)
            zero = _add_initializer(qmodel, f"{weight_name}.zero_point", encoding.zero_point.astype(np.int8))
            kwargs = {"axis": encoding.axis} if encoding.axis is not None else {}
            new_nodes.append(helper.make_node("DequantizeLinear", [q_name, scale, zero], [f"{weight_name}.dq"],
                                              name=f"{weight_name}.DequantizeLinear", **kwargs))
            node.input[1] = f"{weight_name}.dq"
            params[weight_name] = encoding
            if len(node.input) > 2 and node.input[2]:
                if source not in rename:
                    raise CalibrationError(f"{node.op_type} '{node.name}': its input has no activation encoding")
                b_enc = bias_encoding(activations[source].scale, encoding)
                b_enc = Encoding(b_enc.scale, b_enc.zero_point, "int32", 0 if b_enc.axis is not None else None)
                bias_name = node.input[2]
                q_bias = b_enc.quantize(index.constant(bias_name))
                qb = _add_initializer(qmodel, f"{bias_name}.int32", q_bias)
                bs = _add_initializer(qmodel, f"{bias_name}.scale", b_enc.scale)
                bz = _add_initializer(qmodel, f"{bias_name}.zero_point", b_enc.zero_point.astype(np.int32))
                new_nodes.append(helper.make_node("DequantizeLinear", [qb, bs, bz], [f"{bias_name}.dq"],
                                                  name=f"{bias_name}.DequantizeLinear",
                                                  **({"axis": 0} if b_enc.axis is not None else {})))
                node.input[2] = f"{bias_name}.dq"
                params[bias_name] = b_enc
        new_nodes.append(node)
        new_nodes.extend(_quantize_outputs(qmodel, node.output, activations, rename))
    del qmodel.graph.node[:]
    qmodel.graph.node.extend(new_nodes)
    drop_unused_initializers(qmodel)
    onnx.checker.check_model(qmodel)
    return qmodel, params


def with_int8_weights(model: onnx.ModelProto, weights: dict[str, tuple[Encoding, np.ndarray]]) -> onnx.ModelProto:
    """A copy of the float ``model`` whose weighted layers use the dequantized int8 ``weights`` (from
    ``quantized_weights``); activations stay float."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    index = GraphIndex.build(copy)
    for node in copy.graph.node:
        if node.name in weights:
            encoding, q = weights[node.name]
            index.set_constant(node.input[1], encoding.dequantize(q))
    return copy


def with_activation_qdq(model: onnx.ModelProto, activations: dict[str, Encoding]) -> onnx.ModelProto:
    """A copy of the float ``model`` with a QuantizeLinear→DequantizeLinear pair on every encoded tensor:
    the activations the int8 model will see, with float weights."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    rename: dict[str, str] = {}
    nodes = _quantize_outputs(copy, [input_name(copy)], activations, rename)
    for node in copy.graph.node:
        _read_dequantized(node, rename)
        nodes.append(node)
        nodes.extend(_quantize_outputs(copy, node.output, activations, rename))
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    return copy
