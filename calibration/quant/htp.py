"""The int8 model in the form Qualcomm's HTP takes whole (QNN execution provider, CPU fallback disabled).

Written from the CPU int8 QDQ model and ``encodings.json``, so both models carry the same encodings. Two changes,
both measured on the QNN HTP emulator (onnxruntime-qnn 2.7.0):
- a static batch: with a dynamic first dimension QNN rejects every node, and ONNX Runtime would run them all on
  its CPU kernels;
- a Q→DQ pair on every float graph output of a quantized op: a Gemm with a float output fails QNN's validation as
  FullyConnected (error 3110), while a quantized one runs on the HTP. The pair's encoding is the graph output's,
  which the ``profile`` step measured on the calibration images and ``encodings.json`` keeps; its dtype is the
  encoding's, so a wider output (uint16) needs no change here.
"""

from __future__ import annotations

import onnx

from calibration.graph.index import GraphIndex
from calibration.quant.emit import qdq_pair
from calibration.quant.encodings import Encoding
from workload.errors import CalibrationError


def _fix_batch(model: onnx.ModelProto, batch: int) -> None:
    graph = model.graph
    for value in (*graph.input, *graph.output, *graph.value_info):
        dims = value.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_value = batch


def _quantize_output(model: onnx.ModelProto, index: GraphIndex, name: str, encoding: Encoding) -> None:
    """``producer → name`` becomes ``producer → name.float → Q → DQ → name`` (the output keeps its name)."""
    producer = index.producer[name]
    unquantized = f"{name}.float"
    producer.output[list(producer.output).index(name)] = unquantized
    nodes, _ = qdq_pair(model, name, encoding)  # the writer's pair, rewired: it reads the float copy, writes ``name``
    nodes[0].input[0] = unquantized
    nodes[1].output[0] = name
    at = list(model.graph.node).index(producer) + 1  # right after the producer: the graph stays sorted
    for offset, node in enumerate(nodes):
        model.graph.node.insert(at + offset, node)


def htp_form(int8_model: onnx.ModelProto, activations: dict[str, Encoding], batch: int = 1) -> onnx.ModelProto:
    """The HTP form of ``int8_model`` (never edited); ``activations`` are encodings.json's activation encodings."""
    if batch < 1:
        raise CalibrationError(f"the HTP form needs a static batch of at least 1, got {batch}")
    model = onnx.ModelProto()
    model.CopyFrom(int8_model)
    _fix_batch(model, batch)
    index = GraphIndex.build(model)
    for output in [o.name for o in model.graph.output]:
        producer = index.producer.get(output)
        if producer is None or producer.op_type == "DequantizeLinear":
            continue
        if output not in activations:
            raise CalibrationError(f"graph output '{output}' (from {producer.op_type} '{producer.name}') has no "
                                   "encoding in encodings.json: recalibrate with this version")
        _quantize_output(model, index, output, activations[output])
    onnx.checker.check_model(model)
    return model
