"""Node emitters the QDQ writer and the simulations share: Q/DQ pairs, the integer Min, weight and bias DQ."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from calibration.graph.index import GraphIndex
from calibration.graph.patterns import constant_min_bound
from calibration.quant.encodings import NUMPY_DTYPES, Encoding, bias_encoding


def add_initializer(model: onnx.ModelProto, name: str, value: np.ndarray) -> str:
    model.graph.initializer.append(numpy_helper.from_array(value, name))
    return name


def qdq_pair(model: onnx.ModelProto, tensor: str, encoding: Encoding) -> tuple[list[onnx.NodeProto], str]:
    scale = add_initializer(model, f"{tensor}.scale", encoding.scale.astype(np.float32))
    zero = add_initializer(model, f"{tensor}.zero_point", encoding.zero_point.astype(NUMPY_DTYPES[encoding.dtype]))
    quantized, dequantized = f"{tensor}.quantized", f"{tensor}.dequantized"
    nodes = [
        helper.make_node("QuantizeLinear", [tensor, scale, zero], [quantized], name=f"{tensor}.QuantizeLinear"),
        helper.make_node("DequantizeLinear", [quantized, scale, zero], [dequantized],
                         name=f"{tensor}.DequantizeLinear"),
    ]
    return nodes, dequantized


def quantize_outputs(model: onnx.ModelProto, tensors: Sequence[str], activations: dict[str, Encoding],
                      rename: dict[str, str]) -> list[onnx.NodeProto]:
    """Q/DQ pairs for the encoded ``tensors``, recording each one's dequantized copy in ``rename``."""
    nodes: list[onnx.NodeProto] = []
    for tensor in tensors:
        if tensor in activations:
            pairs, rename[tensor] = qdq_pair(model, tensor, activations[tensor])
            nodes.extend(pairs)
    return nodes


def read_dequantized(node: onnx.NodeProto, rename: dict[str, str]) -> None:
    """Point ``node``'s inputs at the dequantized copies of encoded tensors."""
    for i, name in enumerate(node.input):
        if name in rename:
            node.input[i] = rename[name]


def integer_min(model: onnx.ModelProto, index: GraphIndex, node: onnx.NodeProto, source: str,
                 encoding: Encoding) -> list[onnx.NodeProto]:
    """Q(source) → Min against uint8 bounds → DQ, all with the Min output's encoding."""
    out = node.output[0]
    thresholds = encoding.quantize(index.constant(constant_min_bound(node, index)))
    scale = add_initializer(model, f"{out}.scale", encoding.scale.astype(np.float32))
    zero = add_initializer(model, f"{out}.zero_point", encoding.zero_point.astype(np.uint8))
    clamp = bool(np.any(thresholds < encoding.qmax))
    quantized_in = f"{out}.input_quantized" if clamp else f"{out}.quantized"
    nodes = [helper.make_node("QuantizeLinear", [source, scale, zero], [quantized_in],
                              name=f"{out}.QuantizeLinear")]
    if clamp:
        bound = add_initializer(model, f"{out}.bound_quantized", thresholds)
        nodes.append(helper.make_node("Min", [quantized_in, bound], [f"{out}.quantized"], name=node.name))
    nodes.append(helper.make_node("DequantizeLinear", [f"{out}.quantized", scale, zero], [f"{out}.dequantized"],
                                  name=f"{out}.DequantizeLinear"))
    return nodes


def weighted_layer(model: onnx.ModelProto, index: GraphIndex, node: onnx.NodeProto,
                   weight: tuple[Encoding, np.ndarray], input_scale: np.ndarray | None
                   ) -> tuple[list[onnx.NodeProto], dict[str, Encoding]]:
    """DequantizeLinear nodes for a Conv/Gemm/MatMul's int8 weight and, given its input's scale, its int32 bias
    (scale s_in·s_w, zero point 0); ``node`` is pointed at them. Returns the nodes and the encodings used."""
    encoding, q = weight
    weight_name = node.input[1]
    q_name = add_initializer(model, f"{weight_name}.int8", q)
    scale = add_initializer(model, f"{weight_name}.scale", encoding.scale)
    zero = add_initializer(model, f"{weight_name}.zero_point", encoding.zero_point.astype(np.int8))
    kwargs = {"axis": encoding.axis} if encoding.axis is not None else {}
    nodes = [helper.make_node("DequantizeLinear", [q_name, scale, zero], [f"{weight_name}.dq"],
                              name=f"{weight_name}.DequantizeLinear", **kwargs)]
    node.input[1] = f"{weight_name}.dq"
    params = {weight_name: encoding}
    if len(node.input) > 2 and node.input[2] and input_scale is not None:
        b_enc = bias_encoding(input_scale, encoding)
        b_enc = Encoding(b_enc.scale, b_enc.zero_point, "int32", 0 if b_enc.axis is not None else None)
        bias_name = node.input[2]
        qb = add_initializer(model, f"{bias_name}.int32", b_enc.quantize(index.constant(bias_name)))
        bs = add_initializer(model, f"{bias_name}.scale", b_enc.scale)
        bz = add_initializer(model, f"{bias_name}.zero_point", b_enc.zero_point.astype(np.int32))
        nodes.append(helper.make_node("DequantizeLinear", [qb, bs, bz], [f"{bias_name}.dq"],
                                      name=f"{bias_name}.DequantizeLinear",
                                      **({"axis": 0} if b_enc.axis is not None else {})))
        node.input[2] = f"{bias_name}.dq"
        params[bias_name] = b_enc
    return nodes, params
