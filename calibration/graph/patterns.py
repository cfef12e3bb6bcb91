"""Op patterns the transforms and the writer recognise: Clip and Min bounds, weight axes, depthwise and padded convs."""

from __future__ import annotations

import numpy as np
import onnx

from calibration.graph.index import GraphIndex, attribute, conv_group
from workload.errors import CalibrationError


def is_depthwise(node: onnx.NodeProto, weight: np.ndarray) -> bool:
    group = conv_group(node)
    return group > 1 and group == weight.shape[0] and weight.shape[1] == 1


def pads_input(node: onnx.NodeProto) -> bool:
    """Whether a Conv reads zero padding (explicit pads or SAME auto-padding with a kernel above 1)."""
    if any(p != 0 for p in attribute(node, "pads", [])):
        return True
    kernel = attribute(node, "kernel_shape", [])
    return attribute(node, "auto_pad", b"NOTSET") in (b"SAME_UPPER", b"SAME_LOWER") and any(k > 1 for k in kernel)


WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")


def constant_min_bound(node: onnx.NodeProto, index: GraphIndex) -> str | None:
    """The initializer operand of a two-input Min against non-negative bounds, if it has one."""
    if node.op_type != "Min" or len(node.input) != 2:
        return None
    for name in node.input:
        if name in index.initializers and np.all(index.constant(name) >= 0):
            return name
    return None


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


def weight_axis(node: onnx.NodeProto) -> int:
    """The weight's output-channel axis: 0 for Conv and Gemm(transB=1), 1 for MatMul and Gemm(transB=0)."""
    if node.op_type == "Conv" or (node.op_type == "Gemm" and attribute(node, "transB", 0) == 1):
        return 0
    return 1
