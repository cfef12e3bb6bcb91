"""A small ONNX graph builder for the CNN layers the importers need (opset 17, NCHW, dynamic batch)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class GraphBuilder:
    """Appends nodes and initializers; every method returns the name of the tensor it produced."""

    def __init__(self, input_name: str, channels: int, height: int, width: int):
        self.input_name = input_name
        self._input = helper.make_tensor_value_info(
            input_name, TensorProto.FLOAT, ["batch", channels, height, width]
        )
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def conv(
        self,
        x: str,
        name: str,
        weight: np.ndarray,
        bias: np.ndarray | None = None,
        stride: int = 1,
        pads: tuple[int, int, int, int] | None = None,
        group: int = 1,
    ) -> str:
        """Conv; ``pads`` is (top, left, bottom, right), symmetric ``(k-1)//2`` when not given."""
        kernel_h, kernel_w = weight.shape[2:]
        if pads is None:
            pads = ((kernel_h - 1) // 2, (kernel_w - 1) // 2, (kernel_h - 1) // 2, (kernel_w - 1) // 2)
        inputs = [x, self.constant(f"{name}.weight", weight.astype(np.float32))]
        if bias is not None:
            inputs.append(self.constant(f"{name}.bias", bias.astype(np.float32)))
        out = f"{name}.out"
        self.nodes.append(
            helper.make_node(
                "Conv",
                inputs,
                [out],
                name=name,
                kernel_shape=[kernel_h, kernel_w],
                strides=[stride, stride],
                pads=[pads[0], pads[1], pads[2], pads[3]],
                group=group,
            )
        )
        return out

    def batch_norm(self, x: str, name: str, state: dict[str, np.ndarray], eps: float) -> str:
        inputs = [x] + [
            self.constant(f"{name}.{key}", state[f"{name}.{key}"].astype(np.float32))
            for key in ("weight", "bias", "running_mean", "running_var")
        ]
        out = f"{name}.out"
        self.nodes.append(helper.make_node("BatchNormalization", inputs, [out], name=name, epsilon=eps))
        return out

    def relu(self, x: str, name: str) -> str:
        out = f"{name}.out"
        self.nodes.append(helper.make_node("Relu", [x], [out], name=name))
        return out

    def relu6(self, x: str, name: str) -> str:
        low = self.constant(f"{name}.min", np.array(0.0, np.float32))
        high = self.constant(f"{name}.max", np.array(6.0, np.float32))
        out = f"{name}.out"
        self.nodes.append(helper.make_node("Clip", [x, low, high], [out], name=name))
        return out

    def add(self, a: str, b: str, name: str) -> str:
        out = f"{name}.out"
        self.nodes.append(helper.make_node("Add", [a, b], [out], name=name))
        return out

    def max_pool(self, x: str, name: str, kernel: int, stride: int, pad: int) -> str:
        out = f"{name}.out"
        self.nodes.append(
            helper.make_node(
                "MaxPool", [x], [out], name=name, kernel_shape=[kernel, kernel],
                strides=[stride, stride], pads=[pad] * 4,
            )
        )
        return out

    def global_avg_pool_flat(self, x: str, name: str) -> str:
        pooled = f"{name}.pool"
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled], name=f"{name}.pool"))
        out = f"{name}.flat"
        self.nodes.append(helper.make_node("Flatten", [pooled], [out], name=f"{name}.flatten", axis=1))
        return out

    def gemm(self, x: str, name: str, weight: np.ndarray, bias: np.ndarray, out: str | None = None) -> str:
        out = out or f"{name}.out"
        inputs = [
            x,
            self.constant(f"{name}.weight", weight.astype(np.float32)),
            self.constant(f"{name}.bias", bias.astype(np.float32)),
        ]
        self.nodes.append(helper.make_node("Gemm", inputs, [out], name=name, transB=1))
        return out

    def softmax(self, x: str, name: str, out: str) -> str:
        self.nodes.append(helper.make_node("Softmax", [x], [out], name=name, axis=1))
        return out

    def build(self, graph_name: str, outputs: list[tuple[str, int]]) -> onnx.ModelProto:
        """``outputs`` lists (tensor name, class count) pairs."""
        graph = helper.make_graph(
            self.nodes,
            graph_name,
            [self._input],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", c]) for n, c in outputs],
            initializer=self.initializers,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="int8-harness"
        )
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model
