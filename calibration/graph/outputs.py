"""Copies of a model with other graph outputs: chosen tensors, per-image statistics, standalone segments."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from calibration.graph.index import GraphIndex
from workload.errors import CalibrationError


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs are exactly ``names`` (float tensors)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.output[:]
    copy.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    return copy


def segment_model(index: GraphIndex, nodes: Sequence[onnx.NodeProto], inputs: dict[str, np.dtype],
                  outputs: Sequence[str], name: str) -> onnx.ModelProto:
    """A standalone model of ``nodes`` (a topologically ordered slice of ``index.model``) that reads
    ``inputs`` (name -> dtype) and returns ``outputs``; it carries the initializers the nodes use."""
    used = {t for n in nodes for t in n.input if t in index.initializers}
    graph = helper.make_graph(
        list(nodes), name,
        [helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(np.dtype(d)), None)
         for t, d in inputs.items()],
        [helper.make_empty_tensor_value_info(t) for t in outputs],
        [index.initializers[t] for t in sorted(used)],
    )
    return helper.make_model(graph, opset_imports=index.model.opset_import)


def statistics_names(tensor: str) -> tuple[str, str, str]:
    """The per-image minimum, per-image maximum and element sample that ``with_statistics_outputs`` adds."""
    return f"{tensor}.image_min", f"{tensor}.image_max", f"{tensor}.sample"


def with_statistics_outputs(model: onnx.ModelProto, tensors: Sequence[str],
                            sample_strides: dict[str, int] | None = None) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are each tensor's per-image minimum and maximum, shape (N,),
    and, for tensors in ``sample_strides``, every k-th element of each image, shape (N, ⌈E/k⌉).

    The reductions and the sampling run inside ORT, so no full activation is ever copied out.
    Sampling needs Slice with steps (opset 10); older models return every element.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    opset = next((o.version for o in copy.opset_import if o.domain in ("", "ai.onnx")), 1)
    del copy.graph.output[:]

    def constant(name: str, values: list[int]) -> str:
        copy.graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    for tensor in tensors:
        flat = f"{tensor}.flat_per_image"
        low, high, sample = statistics_names(tensor)
        copy.graph.node.append(helper.make_node("Flatten", [tensor], [flat], axis=1))
        for op, name in (("ReduceMin", low), ("ReduceMax", high)):
            if opset >= 18:  # axes became an input in opset 18
                copy.graph.node.append(helper.make_node(op, [flat, constant(f"{name}.axes", [1])], [name], keepdims=0))
            else:
                copy.graph.node.append(helper.make_node(op, [flat], [name], axes=[1], keepdims=0))
            copy.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch"]))
        if sample_strides is not None and tensor in sample_strides:
            stride = sample_strides[tensor] if opset >= 10 else 1
            if stride == 1:
                copy.graph.node.append(helper.make_node("Identity", [flat], [sample]))
            else:
                inputs = [flat, constant(f"{sample}.starts", [0]), constant(f"{sample}.ends", [2**62]),
                          constant(f"{sample}.axes", [1]), constant(f"{sample}.steps", [stride])]
                copy.graph.node.append(helper.make_node("Slice", inputs, [sample]))
            copy.graph.output.append(helper.make_tensor_value_info(sample, TensorProto.FLOAT, ["batch", None]))
    return copy


def channel_reduction_name(tensor: str, op: str) -> str:
    """The per-image, per-channel reduction ``op`` of ``tensor`` that ``with_channel_reductions`` adds."""
    return f"{tensor}.channel_{op}"


def with_channel_reductions(model: onnx.ModelProto, tensors: Sequence[str], ops: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are each tensor's per-image, per-channel (axis 1) reductions ``ops``
    (ReduceMin, ReduceMax, ReduceMean), shape (N, C), computed inside ORT right after the tensor's producer, so
    that no full activation is copied out and each can be freed early."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    opset = next((o.version for o in copy.opset_import if o.domain in ("", "ai.onnx")), 1)
    del copy.graph.output[:]
    shape = "channel_reductions.per_channel_shape"
    copy.graph.initializer.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), shape))
    if opset >= 18:  # axes became an input in opset 18
        copy.graph.initializer.append(numpy_helper.from_array(np.array([2], np.int64), "channel_reductions.axes"))
    wanted = set(tensors)
    nodes = list(copy.graph.node)
    del copy.graph.node[:]
    produced = {i.name for i in copy.graph.input} & wanted
    for tensor in sorted(produced):
        _append_channel_reductions(copy, tensor, shape, ops, opset)
    for node in nodes:
        copy.graph.node.append(node)
        for tensor in (t for t in node.output if t in wanted):
            _append_channel_reductions(copy, tensor, shape, ops, opset)
            produced.add(tensor)
    missing = wanted - produced
    if missing:
        raise CalibrationError(f"no node produces '{sorted(missing)[0]}'")
    return copy


def _append_channel_reductions(model: onnx.ModelProto, tensor: str, shape: str, ops: Sequence[str],
                               opset: int) -> None:
    rows = f"{tensor}.per_channel"
    model.graph.node.append(helper.make_node("Reshape", [tensor, shape], [rows]))
    for op in ops:
        name = channel_reduction_name(tensor, op)
        if opset >= 18:
            model.graph.node.append(helper.make_node(op, [rows, "channel_reductions.axes"], [name], keepdims=0))
        else:
            model.graph.node.append(helper.make_node(op, [rows], [name], axes=[2], keepdims=0))
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", None]))
