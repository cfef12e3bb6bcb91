"""GPTQ's input Hessians H = Σ x̃x̃ᵀ (x̃ = [x; 1]) computed inside ONNX Runtime, in the pass that produces the
quantized inputs.

For each layer the graph gets a few extra nodes. A convolution's input rows are its im2col patches, extracted by
a Conv with one-hot kernels (``group`` = input channels, one output channel per kernel tap, the layer's own
strides, pads and dilations), or the input itself reshaped for a 1×1 stride-1 convolution.
- Grouped and dense layers: the patches are laid out (groups, K, N·rows) and multiplied with their transpose,
  one batched GEMM per layer and batch.
- Depthwise layers (one input channel per group) skip that transpose, which cost more than the GEMM: each image's
  patch planes become the kernels of a second Conv over the layer's padded input (one group per image and
  channel, dilated by the layer's stride), whose kh×kw outputs are the Gram entries of one tap against every
  other; a ReduceSum adds the images. The group count holds the batch size, so each batch size gets its own
  session (the full batches and the last one).
The patches' sum over rows gives the bias column. Only the (groups, K, K) Gram matrices and (groups, K) sums
leave ORT, in float32 per batch, and are accumulated across batches in float64.

This replaced numpy im2col copies and per-layer numpy GEMMs over every activation copied out of ORT, which
were several times slower (results/experiments/gptq_speed.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from tqdm import tqdm

from calibration.graph.index import GraphIndex, attribute, conv_group, input_name
from calibration.graph.session import make_session
from workload.errors import CalibrationError


@dataclass(frozen=True)
class _Outputs:
    gram: str  # (groups, K, K) over the batch's rows, or (K, K) for one group
    total: str  # (groups, K): the rows' sum
    shape: str  # int64: the shape of the tensor whose ``row_axes`` count the batch's rows
    row_axes: tuple[int, ...]


def _one_hot_kernels(channels: int, kh: int, kw: int) -> np.ndarray:
    """(channels·kh·kw, 1, kh, kw): output channel c·kh·kw + i·kw + j copies tap (i, j) of input channel c."""
    taps = kh * kw
    kernels = np.zeros((channels * taps, 1, kh, kw), np.float32)
    kernels[np.arange(channels * taps), 0, np.tile(np.arange(taps) // kw, channels),
            np.tile(np.arange(taps) % kw, channels)] = 1.0
    return kernels


def _explicit_pads(node: onnx.NodeProto) -> list[int] | None:
    """The layer's (top, left, bottom, right) pads, or None where ``auto_pad`` leaves them to the input shape."""
    auto_pad = attribute(node, "auto_pad", b"NOTSET")
    if auto_pad in (b"VALID", "VALID"):
        return [0, 0, 0, 0]
    if auto_pad not in (b"NOTSET", "NOTSET"):
        return None
    return list(attribute(node, "pads", [0, 0, 0, 0]))


def _is_pointwise(node: onnx.NodeProto, kh: int, kw: int) -> bool:
    pads = _explicit_pads(node)
    strides = attribute(node, "strides", [1, 1])
    return (kh, kw) == (1, 1) and list(strides) == [1, 1] and (pads is None or not any(pads))


class _Builder:
    """Appends the Hessian nodes of each layer to a copy of the model, for batches of ``batch`` images."""

    def __init__(self, model: onnx.ModelProto, batch: int):
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        del self.model.graph.output[:]
        self.batch = batch
        self.opset = next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 1)
        if self.opset < 13:
            raise CalibrationError(f"gptq: the in-graph Hessians need opset 13 or later (the model has {self.opset})")
        self.index = GraphIndex.build(self.model)

    def _constant(self, name: str, value: np.ndarray) -> str:
        self.model.graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    def _node(self, op: str, inputs: list[str], output: str, **attributes) -> str:
        self.model.graph.node.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def _reduce_sum(self, data: str, axes: list[int], output: str) -> str:
        return self._node("ReduceSum", [data, self._constant(f"{output}.axes", np.array(axes, np.int64))], output,
                          keepdims=0)

    def _ints(self, name: str, values: list[int]) -> str:
        return self._constant(name, np.array(values, np.int64))

    def _outputs(self, gram: str, total: str, shaped: str, row_axes: tuple[int, ...]) -> _Outputs:
        shape = self._node("Shape", [shaped], f"{shaped}.shape")
        self.model.graph.output.extend([helper.make_tensor_value_info(gram, TensorProto.FLOAT, None),
                                        helper.make_tensor_value_info(total, TensorProto.FLOAT, None),
                                        helper.make_tensor_value_info(shape, TensorProto.INT64, None)])
        return _Outputs(gram, total, shape, row_axes)

    def _depthwise(self, node: onnx.NodeProto, patches: str, channels: int, kh: int, kw: int,
                   pads: list[int]) -> _Outputs:
        """Gram matrices of a depthwise layer from its patch planes (N, C·K, Ho, Wo), without a transpose: plane
        (n, c, j) is the kernel of a Conv over image n's padded channel c, dilated by the layer's stride and
        stepped by its dilation, so output (i_y, i_x) is Σ over the output positions of tap i times tap j."""
        prefix = f"{node.name}.hessian"
        strides = list(attribute(node, "strides", [1, 1]))
        dilations = list(attribute(node, "dilations", [1, 1]))
        images = self._node("Reshape", [node.input[0], self._ints(f"{prefix}.images_shape", [1, -1, 0, 0])],
                            f"{prefix}.images")  # (1, N·C, H, W), padded by the Conv below
        kernels = self._node("Reshape", [patches, self._ints(f"{prefix}.kernels_shape", [-1, 1, 0, 0])],
                             f"{prefix}.kernels")  # (N·C·K, 1, Ho, Wo)
        # kernel_shape is left out: ORT takes it from the kernels' runtime shape.
        products = self._node("Conv", [images, kernels], f"{prefix}.products", group=self.batch * channels,
                              dilations=strides, strides=dilations, pads=pads)  # (1, N·C·K, ≥kh, ≥kw)
        taps = products  # with stride 1 the products are exactly kh×kw; a stride can leave a row or column more
        if strides != [1, 1]:
            taps = self._node("Slice", [products, self._ints(f"{prefix}.starts", [0, 0]),
                                        self._ints(f"{prefix}.ends", [kh, kw]), self._ints(f"{prefix}.axes", [2, 3])],
                              f"{prefix}.taps")
        per_image = self._node("Reshape", [taps, self._ints(f"{prefix}.gram_shape", [self.batch, channels, kh * kw,
                                                                                     kh * kw])],
                               f"{prefix}.per_image_gram")
        gram = self._reduce_sum(per_image, [0], f"{prefix}.gram")
        # Summing the contiguous last axis first: one ReduceSum over axes (0, 2, 3) cost 3.6 ms per MobileNetV2 image.
        planes = self._node("Reshape", [patches, self._ints(f"{prefix}.planes_shape", [self.batch, channels * kh * kw,
                                                                                      -1])], f"{prefix}.planes")
        per_image_sum = self._reduce_sum(planes, [2], f"{prefix}.per_image_sum")
        total = self._node("Reshape", [self._reduce_sum(per_image_sum, [0], f"{prefix}.flat_sum"),
                                       self._ints(f"{prefix}.sum_shape", [channels, kh * kw])], f"{prefix}.sum")
        return self._outputs(gram, total, patches, (0, 2, 3))

    def add(self, node: onnx.NodeProto) -> _Outputs:
        """The layer's Gram matrices and row sums, as graph outputs."""
        prefix = f"{node.name}.hessian"
        x = node.input[0]
        if node.op_type == "Gemm":
            if attribute(node, "transA", 0):
                raise CalibrationError(f"Gemm '{node.name}': gptq does not handle transA=1")
            rows = self._node("Transpose", [x], f"{prefix}.rows_t", perm=[1, 0])  # (K, N)
            patches = self._node("Unsqueeze", [rows, self._ints(f"{prefix}.unsqueeze", [0])],
                                 f"{prefix}.patches")  # (1, K, N)
            return self._gram(prefix, patches, 1)
        if node.op_type != "Conv":
            raise CalibrationError(f"gptq: '{node.name}' is a {node.op_type}, not a Conv or Gemm")
        weight = self.index.constant(node.input[1])
        if weight.ndim != 4:
            raise CalibrationError(f"Conv '{node.name}': gptq handles 2-D convolutions only")
        kh, kw = weight.shape[2:]
        groups = conv_group(node)
        channels = weight.shape[1] * groups
        k = weight.shape[1] * kh * kw
        if _is_pointwise(node, kh, kw):
            source = x
        else:
            attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute
                          if a.name in ("strides", "pads", "dilations", "auto_pad")}
            kernels = self._constant(f"{prefix}.one_hot", _one_hot_kernels(channels, kh, kw))
            source = self._node("Conv", [x, kernels], f"{prefix}.im2col", group=channels,
                                kernel_shape=[kh, kw], **attributes)
            pads = _explicit_pads(node)
            if weight.shape[1] == 1 and pads is not None:
                return self._depthwise(node, source, channels, kh, kw, pads)
        shaped = self._node("Reshape", [source, self._ints(f"{prefix}.shape4", [0, groups, k, -1])],
                            f"{prefix}.per_image")  # (N, groups, K, H·W)
        moved = self._node("Transpose", [shaped], f"{prefix}.moved", perm=[1, 2, 0, 3])  # (groups, K, N, H·W)
        patches = self._node("Reshape", [moved, self._ints(f"{prefix}.shape3", [groups, k, -1])],
                             f"{prefix}.patches")  # (groups, K, rows)
        return self._gram(prefix, patches, groups)

    def _gram(self, prefix: str, patches: str, groups: int) -> _Outputs:
        """Gram matrices and sums of (groups, K, rows) patches."""
        if groups == 1:
            flat = self._node("Squeeze", [patches, self._ints(f"{prefix}.squeeze", [0])], f"{prefix}.flat")
            # (K, K): numpy adds the group axis, an Unsqueeze here copied every Gram matrix
            gram = self._node("Gemm", [flat, flat], f"{prefix}.gram", transB=1)
        else:
            transposed = self._node("Transpose", [patches], f"{prefix}.patches_t", perm=[0, 2, 1])
            gram = self._node("MatMul", [patches, transposed], f"{prefix}.gram")
        return self._outputs(gram, self._reduce_sum(patches, [2], f"{prefix}.sum"), patches, (2,))


def _hessian_session(model: onnx.ModelProto, layers: list[onnx.NodeProto], batch: int
                     ) -> tuple[ort.InferenceSession, dict[str, _Outputs]]:
    builder = _Builder(model, batch)
    outputs = {node.name: builder.add(node) for node in layers}
    # ORT's graph optimizations rewrite QDQ around float weights inexactly: they stay off here.
    return make_session(builder.model, optimize=False), outputs


def input_hessians(model: onnx.ModelProto, layer_names: Sequence[str], images: np.ndarray,
                   batch_size: int, show_progress: bool = True) -> dict[str, np.ndarray]:
    """Each named layer's H = Σ x̃x̃ᵀ over its input rows (x̃ = [x; 1]) per group, (groups, K+1, K+1), over
    ``images`` through ``model``, streamed batch by batch (float32 products per batch inside ORT, accumulated
    in float64).

    The layers are looked up in ``model`` itself, so in a model with Q/DQ activations and float weights
    (``write_qdq_model(float_weights=True)``) their inputs are the dequantized tensors, exactly what the int8
    layers will read."""
    wanted = set(layer_names)
    layers = [n for n in model.graph.node if n.name in wanted]
    feed = input_name(model)
    sessions: dict[int, tuple[ort.InferenceSession, dict[str, _Outputs]]] = {}
    grams: dict[str, np.ndarray] = {}
    sums: dict[str, np.ndarray] = {}
    rows: dict[str, int] = {}
    with tqdm(total=len(images), desc="gptq inputs", unit="img", disable=not show_progress) as progress:
        for start in range(0, len(images), batch_size):
            batch = np.ascontiguousarray(images[start : start + batch_size])
            if len(batch) not in sessions:  # the full batches, then at most one shorter last batch
                sessions = {len(batch): _hessian_session(model, layers, len(batch))}
            session, outputs = sessions[len(batch)]
            names = [o.name for o in session.get_outputs()]
            values = dict(zip(names, session.run(names, {feed: batch})))
            for name, out in outputs.items():
                gram = values[out.gram]
                if name not in grams:
                    grams[name] = np.zeros(values[out.total].shape + gram.shape[-1:], np.float64)
                    sums[name] = np.zeros(values[out.total].shape, np.float64)
                    rows[name] = 0
                grams[name] += gram  # (K, K) broadcasts over the one group
                sums[name] += values[out.total]
                rows[name] += int(np.prod(values[out.shape][list(out.row_axes)]))
            progress.update(len(batch))
    return {name: _augmented(grams[name], sums[name], rows[name]) for name in grams}


def _augmented(gram: np.ndarray, total: np.ndarray, rows: int) -> np.ndarray:
    """[[XᵀX, Σx], [Σxᵀ, rows]] per group."""
    groups, k, _ = gram.shape
    hessian = np.empty((groups, k + 1, k + 1))
    hessian[:, :k, :k] = (gram + gram.transpose(0, 2, 1)) / 2  # float32 products need not be symmetric
    hessian[:, :k, k] = total
    hessian[:, k, :k] = total
    hessian[:, k, k] = rows
    return hessian

