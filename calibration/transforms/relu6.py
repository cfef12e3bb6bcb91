"""ReLU6 → ReLU, as the data-free quantization paper does (this changes the float function)."""

from __future__ import annotations

import onnx
from onnx import helper

from calibration.graph.index import GraphIndex
from calibration.graph.patterns import clip_bounds


def relu6_to_relu(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str], list[str]]:
    """Replace every Clip(0, c) by Relu (changes the float function); returns (model, replaced, kept)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    index = GraphIndex.build(copy)
    replaced, kept = [], []
    new_nodes = []
    for node in copy.graph.node:
        if node.op_type == "Clip":
            low, high = clip_bounds(node, index)
            if low == 0.0:
                new_nodes.append(helper.make_node("Relu", [node.input[0]], [node.output[0]], name=node.name))
                replaced.append(node.name)
                continue
            kept.append(f"{node.name}: Clip({low:g}, {high:g}) does not start at 0")
        new_nodes.append(node)
    del copy.graph.node[:]
    copy.graph.node.extend(new_nodes)
    return copy, replaced, kept
