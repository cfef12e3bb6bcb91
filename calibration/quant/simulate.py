"""The int8 weights exactly as the writer stores them, and float models that simulate part of the int8 model."""

from __future__ import annotations

import numpy as np
import onnx

from calibration.graph.index import GraphIndex, input_name
from calibration.graph.patterns import WEIGHTED_OPS, weight_axis
from calibration.quant.emit import quantize_outputs, read_dequantized
from calibration.quant.encodings import Encoding, quantize_weight


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
    nodes = quantize_outputs(copy, [input_name(copy)], activations, rename)
    for node in copy.graph.node:
        read_dequantized(node, rename)
        nodes.append(node)
        nodes.extend(quantize_outputs(copy, node.output, activations, rename))
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    return copy
