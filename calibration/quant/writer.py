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

import onnx

from calibration.graph.index import GraphIndex, drop_unused_initializers, input_name, remove_nodes
from calibration.quant.emit import integer_min, quantize_outputs, read_dequantized, weighted_layer
from calibration.quant.encodings import Encoding
from calibration.quant.plan import QuantPlan
from calibration.quant.simulate import quantized_weights
from workload.errors import CalibrationError


def write_qdq_model(model: onnx.ModelProto, plan: QuantPlan, activations: dict[str, Encoding],
                    per_channel: bool, float_weights: bool = False) -> tuple[onnx.ModelProto, dict[str, Encoding]]:
    """The QDQ model and the parameter encodings it uses (weights and biases). With ``float_weights`` the
    weights and biases stay float: every activation is exactly what the int8 model reads, in its layout
    (GPTQ's Hessian pass runs this model)."""
    qmodel = onnx.ModelProto()
    qmodel.CopyFrom(model)
    index = GraphIndex.build(qmodel)
    params: dict[str, Encoding] = {}
    weights = {} if float_weights else quantized_weights(qmodel, per_channel)

    # Fold fusable activations: the producer writes the activation's output tensor directly.
    fused_nodes = [n for n in qmodel.graph.node if n.name in plan.fused]
    for act in fused_nodes:
        producer = index.producer[act.input[0]]
        producer.output[0] = act.output[0]
    remove_nodes(qmodel, fused_nodes)

    rename: dict[str, str] = {}  # encoded tensor -> its dequantized copy, which consumers read
    new_nodes = quantize_outputs(qmodel, [input_name(qmodel)], activations, rename)
    for node in qmodel.graph.node:
        if node.name in plan.integer_min:
            out = node.output[0]
            new_nodes.extend(integer_min(qmodel, index, node, plan.integer_min[node.name], activations[out]))
            rename[out] = f"{out}.dequantized"
            continue
        source = node.input[0] if node.input else ""
        read_dequantized(node, rename)
        if node.name in weights:
            if len(node.input) > 2 and node.input[2] and source not in rename:
                raise CalibrationError(f"{node.op_type} '{node.name}': its input has no activation encoding")
            input_scale = activations[source].scale if source in rename else None
            nodes, encodings = weighted_layer(qmodel, index, node, weights[node.name], input_scale)
            new_nodes.extend(nodes)
            params.update(encodings)
        new_nodes.append(node)
        new_nodes.extend(quantize_outputs(qmodel, node.output, activations, rename))
    del qmodel.graph.node[:]
    qmodel.graph.node.extend(new_nodes)
    drop_unused_initializers(qmodel)
    onnx.checker.check_model(qmodel)
    return qmodel, params


