"""Which tensors of a float model get uint8 encodings, and which activations fold into their producer's Q/DQ."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from calibration.graph.index import GraphIndex, input_name
from calibration.graph.patterns import WEIGHTED_OPS, clip_bounds, constant_min_bound
from workload.errors import CalibrationError

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
    # Graph outputs of quantized ops (the logits). The CPU model keeps them float; their encodings are profiled
    # anyway, so that a target whose kernels need a quantized output (the QNN HTP) reads it from encodings.json.
    outputs: list[str] = field(default_factory=list)


def _fusable_upper_bound(node: onnx.NodeProto, index: GraphIndex) -> float | None:
    """``inf`` for Relu, c for Clip(0, c); None when the activation cannot fold into a uint8 encoding."""
    if node.op_type == "Relu":
        return float("inf")
    if node.op_type != "Clip":
        return None
    low, high = clip_bounds(node, index)
    return high if low == 0.0 and np.isfinite(high) else None


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
        if out in outputs and out not in absorbed:
            plan.outputs.append(out)
        elif out not in absorbed:
            plan.activations.append(out)
    return plan
