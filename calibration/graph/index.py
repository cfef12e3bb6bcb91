"""An index of one ONNX graph: producers, consumers and constants, built once per transform, and the small
node edits every transform shares (fresh names, node removal, unused initializers).

``calibration.graph`` holds what the transforms and the writer share: this index, loading and saving
(``io``), sessions (``session``), models with other outputs (``outputs``) and op patterns (``patterns``).
The transforms and the QDQ writer edit graphs through these helpers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from workload.errors import CalibrationError


def attribute(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def conv_group(node: onnx.NodeProto) -> int:
    """A Conv without a ``group`` attribute is group 1."""
    return int(attribute(node, "group", 1))


@dataclass
class GraphIndex:
    """Producers, consumers and constants of one model, built once and used by a whole transform."""

    model: onnx.ModelProto
    producer: dict[str, onnx.NodeProto]
    consumers: dict[str, list[onnx.NodeProto]]
    initializers: dict[str, onnx.TensorProto]
    constant_nodes: dict[str, onnx.NodeProto]

    @classmethod
    def build(cls, model: onnx.ModelProto) -> GraphIndex:
        producer: dict[str, onnx.NodeProto] = {}
        consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        constant_nodes = {}
        for node in model.graph.node:
            for out in node.output:
                producer[out] = node
            for name in node.input:
                if name:
                    consumers[name].append(node)
            if node.op_type == "Constant":
                constant_nodes[node.output[0]] = node
        return cls(model, producer, consumers, {i.name: i for i in model.graph.initializer}, constant_nodes)

    def is_constant(self, name: str) -> bool:
        return name in self.initializers or name in self.constant_nodes

    def constant(self, name: str) -> np.ndarray:
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        if name in self.constant_nodes:
            return numpy_helper.to_array(attribute(self.constant_nodes[name], "value"))
        raise KeyError(name)

    def set_constant(self, name: str, value: np.ndarray) -> None:
        """Replace (or add) an initializer, keeping its dtype."""
        if name in self.initializers:
            dtype = numpy_helper.to_array(self.initializers[name]).dtype
            self.initializers[name].CopyFrom(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        else:
            tensor = numpy_helper.from_array(np.asarray(value), name)
            self.model.graph.initializer.append(tensor)
            self.initializers[name] = self.model.graph.initializer[-1]

    def graph_outputs(self) -> set[str]:
        return {o.name for o in self.model.graph.output}

    def single_consumer(self, tensor: str) -> onnx.NodeProto | None:
        """The only consumer of ``tensor``, or None when it forks or is a graph output."""
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or tensor in self.graph_outputs():
            return None
        return users[0]


def fresh_name(model: onnx.ModelProto, base: str) -> str:
    taken = {i.name for i in model.graph.initializer} | {t for n in model.graph.node for t in n.output}
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}.{k}"
    return name


def remove_nodes(model: onnx.ModelProto, doomed: Iterable[onnx.NodeProto]) -> None:
    doomed_ids = {id(n) for n in doomed}
    kept = [n for n in model.graph.node if id(n) not in doomed_ids]
    del model.graph.node[:]
    model.graph.node.extend(kept)


def drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for n in model.graph.node for name in n.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def input_name(model: onnx.ModelProto) -> str:
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise CalibrationError(f"model {model.graph.name!r} must have exactly one image input, has {inputs}")
    return inputs[0]


