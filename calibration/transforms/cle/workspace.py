"""Numpy working copies of the layers and ReLU6 bounds a set of scalings touches, written back once."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from calibration.graph.index import GraphIndex, fresh_name
from calibration.graph.patterns import constant_min_bound, is_depthwise
from calibration.transforms.cle.sets import CleSet, Link
from calibration.transforms.fold import FoldedBN


@dataclass
class Layer:
    node: onnx.NodeProto
    weight: np.ndarray  # float64 working copy
    bias: np.ndarray | None
    depthwise: bool
    out_scale: np.ndarray  # cumulative division applied to the output channels

    def scale_output(self, s: np.ndarray) -> None:
        self.weight /= s.reshape((-1,) + (1,) * (self.weight.ndim - 1))
        if self.bias is not None:
            self.bias /= s
        self.out_scale *= s

    def scale_input(self, s: np.ndarray) -> None:
        if self.depthwise:
            self.weight *= s.reshape((-1,) + (1,) * (self.weight.ndim - 1))
        else:
            self.weight *= s.reshape((1, -1) + (1,) * (self.weight.ndim - 2))

    def window_sums(self) -> np.ndarray:
        """W summed over the kernel window: (out, in) for an ordinary Conv, (C,) for a depthwise one."""
        summed = self.weight.reshape(self.weight.shape[0], self.weight.shape[1], -1).sum(axis=2)
        return summed[:, 0] if self.depthwise else summed


@dataclass
class Workspace:
    """Numpy copies of every layer and clip bound that the sets touch, written back once."""

    model: onnx.ModelProto
    index: GraphIndex
    layers: dict[str, Layer] = field(default_factory=dict)
    bounds: dict[str, np.ndarray] = field(default_factory=dict)  # link tensor -> per-channel bound

    @classmethod
    def load(cls, model: onnx.ModelProto, sets: list[CleSet]) -> Workspace:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        ws = cls(copy, GraphIndex.build(copy))
        nodes = {n.name: n for n in copy.graph.node}
        for cle_set in sets:
            for name in cle_set.layers:
                if name not in ws.layers:
                    node = nodes[name]
                    weight = ws.index.constant(node.input[1]).astype(np.float64)
                    bias = (ws.index.constant(node.input[2]).astype(np.float64)
                            if len(node.input) > 2 and node.input[2] else None)
                    ws.layers[name] = Layer(node, weight, bias, is_depthwise(node, weight),
                                             np.ones(weight.shape[0]))
            for first, link in zip(cle_set.layers, cle_set.links):
                channels = ws.layers[first].weight.shape[0]
                if link.kind == "clip":
                    ws.bounds[link.tensor] = np.full(channels, link.bound, np.float64)
                elif link.kind == "relu_min":
                    minimum = nodes[link.nodes[1]]
                    ws.bounds[link.tensor] = ws.index.constant(constant_min_bound(minimum, ws.index)).astype(
                        np.float64).reshape(-1) * np.ones(channels)
        return ws

    def scale_link(self, first: str, second: str, link: Link, s: np.ndarray) -> None:
        self.layers[first].scale_output(s)
        self.layers[second].scale_input(s)
        if link.tensor in self.bounds:
            self.bounds[link.tensor] = self.bounds[link.tensor] / s

    def ensure_bias(self, name: str) -> Layer:
        layer = self.layers[name]
        if layer.bias is None:
            bias_name = fresh_name(self.model, f"{name}.bias")
            while len(layer.node.input) < 3:
                layer.node.input.append("")
            layer.node.input[2] = bias_name
            layer.bias = np.zeros(layer.weight.shape[0])
        return layer

    def divisors(self, sets: list[CleSet]) -> dict[str, np.ndarray]:
        """The tensors between the layers of ``sets`` and the per-channel scales their values were divided by."""
        outputs = {n.name: n.output[0] for n in self.model.graph.node}
        divided = {}
        for cle_set in sets:
            for first, link in zip(cle_set.layers, cle_set.links):
                divisor = self.layers[first].out_scale.copy()
                for tensor in (self.layers[first].node.output[0], *(outputs[n] for n in link.nodes)):
                    divided[tensor] = divisor
        return divided

    def write_back(self, sets: list[CleSet]) -> onnx.ModelProto:
        for layer in self.layers.values():
            self.index.set_constant(layer.node.input[1], layer.weight.astype(np.float32))
            if layer.bias is not None:
                self.index.set_constant(layer.node.input[2], layer.bias.astype(np.float32))
        links = {link.tensor: link for s in sets for link in s.links if link.tensor in self.bounds}
        replacements: dict[str, list[onnx.NodeProto]] = {}
        for tensor, link in links.items():
            bound = self.bounds[tensor]
            if link.kind == "relu_min":
                minimum = next(n for n in self.model.graph.node if n.name == link.nodes[1])
                name = constant_min_bound(minimum, self.index)
                shape = self.index.constant(name).shape
                self.index.set_constant(name, bound.reshape(shape if np.prod(shape) == bound.size else (-1, 1, 1)))
            elif np.any(bound != link.bound):
                clip = next(n for n in self.model.graph.node if n.name == link.nodes[0])
                replacements[clip.name] = exact_relu6_nodes(self.model, clip, bound)
        if replacements:
            new_nodes = []
            for node in self.model.graph.node:
                new_nodes.extend(replacements.get(node.name, [node]))
            del self.model.graph.node[:]
            self.model.graph.node.extend(new_nodes)
        return self.model


def exact_relu6_nodes(model: onnx.ModelProto, clip: onnx.NodeProto, bound: np.ndarray) -> list[onnx.NodeProto]:
    """Relu then Min against per-channel bounds (shape (C, 1, 1)), writing the Clip's output."""
    relu_out = fresh_name(model, f"{clip.output[0]}.relu")
    bound_name = fresh_name(model, f"{clip.name}.channel_max")
    model.graph.initializer.append(onnx.numpy_helper.from_array(
        bound.astype(np.float32).reshape(-1, 1, 1), bound_name))
    return [helper.make_node("Relu", [clip.input[0]], [relu_out], name=f"{clip.name}.relu"),
            helper.make_node("Min", [relu_out, bound_name], [clip.output[0]], name=f"{clip.name}.min")]


@dataclass
class EqualizationResult:
    model: onnx.ModelProto
    folded: dict[str, FoldedBN]
    report: dict
    # Each tensor whose channels the scaling divided (a scaled layer's output and its activation's outputs, under
    # the same names), and by what; every other tensor keeps its values.
    divisors: dict[str, np.ndarray] = field(default_factory=dict)
