"""The one module that touches ONNX protobufs: load/save (atomically), constants, producers and
consumers, and float sessions with ORT's graph optimizations off, so that equivalence tests test
our transforms rather than ORT's fusions.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from calibration.errors import CalibrationError
from calibration.files import write_atomic


def load_model(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise CalibrationError(f"{path}: model file not found")
    try:
        return onnx.load(str(path))
    except Exception as err:  # protobuf raises assorted types on corrupt input
        raise CalibrationError(f"{path}: not a valid ONNX model ({type(err).__name__})") from err


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Write to a temporary file, then rename, so an interrupted write never looks complete."""
    write_atomic(path, model.SerializeToString())


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


def make_session(model: onnx.ModelProto, optimize: bool = False, threads: int = 0) -> ort.InferenceSession:
    """A CPU session; ``optimize=False`` disables every ORT graph rewrite."""
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_batches(session: ort.InferenceSession, images: np.ndarray, batch_size: int = 50) -> np.ndarray:
    """Run the session's first output over ``images`` in batches."""
    name = session.get_inputs()[0].name
    outputs = [
        session.run(None, {name: np.ascontiguousarray(images[i : i + batch_size])})[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(outputs)
