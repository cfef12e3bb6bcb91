"""The ONNX nodes that compute GPTQ's input Hessians inside ONNX Runtime (``calibration.rounding.hessian`` runs them).

For each layer the graph gets a few extra nodes, fed from the layer's own uint8 input, dequantized beside the
layer's DequantizeLinear so that ORT still fuses the layer. A convolution's input rows are its im2col patches,
extracted by a Conv with one-hot kernels (``group`` = input channels, one output channel per kernel tap, the
layer's own strides, pads and dilations), or the input itself reshaped for a 1×1 stride-1 convolution.
- Dense convolutions reading a dequantized uint8 tensor (every one in the int8 model but the first): the patches'
  integers q, as (K, rows) and (rows, K), go through MatMulInteger with the zero point z, which gives
  Σ(q − z)(q − z)ᵀ exactly in int32 where one batch cannot overflow it, and faster than a float32 GEMM
  (results/experiments/gptq_speed.md); the scale² multiplies the accumulated sums. A k×k layer's patches are
  im2col'd in float and quantized back, exactly, with the input's own scale and zero point.
- Other grouped and dense layers: the float patches are laid out (groups, K, N·rows) and multiplied with their
  transpose, one batched GEMM per layer and batch.
- One group's Gram of 512 columns or more is computed by halves, as blocks on and above the diagonal only.
- Depthwise layers (one input channel per group) skip that transpose: the patch planes, (N, C, K, rows) as the
  im2col Conv writes them, are multiplied with themselves per image and channel, one batched GEMM, and a
  ReduceSum adds the images.
- Depthwise layers on small inputs (7×7 with a 5×5 kernel) skip the patches: each channel's spatial Gram
  Σₙ xₙxₙᵀ over its H·W input positions is one batched GEMM with the images as the inner dimension, and every
  tap pair's entry of H is a sum of its entries, taken once after the pass (``TapReads``). Where its (H·W)²
  entries are at most 3× the K·rows values of the patches, it does far fewer multiplications than their K²·rows
  and writes no patches (results/experiments/gptq_speed.md).
The float patches' sum over rows gives the bias column. Only the Gram matrices and sums leave ORT.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from calibration.graph.index import GraphIndex, attribute, conv_group
from workload.errors import CalibrationError

# One group's Gram of at least twice this many columns is computed by halves, upper triangle only
# (``gram_blocks``): much smaller blocks run the integer GEMM slower (results/experiments/gptq_speed.md).
GRAM_BLOCK = 256
# A depthwise layer takes the spatial Gram where its (H·W)² entries per channel are at most this many times its
# patches' K·rows values per image, and the (C, H·W, H·W) float64 sums stay within SPATIAL_GRAM_ENTRIES entries
# (64 MB).
SPATIAL_GRAM_RATIO = 3
SPATIAL_GRAM_ENTRIES = 8 * 2**20
INT64_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class HessianOutputs:
    # Blocks of the (groups, K, K) Gram over the batch's rows ((K, K) blocks for one group), each with its first row
    # and column; a block above the diagonal stands for its mirror below it too.
    gram: tuple[tuple[str, int, int], ...]
    total: str  # (groups, K): the rows' sum
    shape: str  # int64: the shape of the tensor whose ``row_axes`` count the batch's rows
    row_axes: tuple[int, ...]
    gram_scale: float = 1.0  # the Gram's factor: s² for integer Grams Σ(q − z)(q − z)ᵀ, accumulated exactly
    taps: TapReads | None = None  # set where the Gram is spatial (C, H·W, H·W) and the sum (C, H·W)

    def rows(self, shape: np.ndarray) -> int:
        """The batch's rows, from the value of the ``shape`` output."""
        return int(np.prod(shape[list(self.row_axes)])) * (1 if self.taps is None else self.taps.reads.shape[1])

    def hessian_parts(self, gram: np.ndarray, total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The (groups, K, K) Gram and (groups, K) sum from the accumulated outputs (scaled in place)."""
        if self.gram_scale != 1.0:
            gram *= self.gram_scale
        return (gram, total) if self.taps is None else self.taps.project(gram, total)


@dataclass(frozen=True)
class TapReads:
    """The input position each tap of a layer reads at each output position its Hessian sees, (K, P) indices into
    the H·W positions, ``positions`` (= H·W) where the tap reads the padding."""

    reads: np.ndarray
    positions: int

    @classmethod
    def of(cls, node: onnx.NodeProto, size: tuple[int, int], kernel: tuple[int, int], pads: list[int],
           step: int) -> TapReads:
        """The taps of Conv ``node`` (with its explicit ``pads``) on inputs of ``size`` (H, W), with every
        ``step``-th output position."""
        strides = attribute(node, "strides", [1, 1])
        dilations = attribute(node, "dilations", [1, 1])
        axes = []
        for axis in range(2):
            span = dilations[axis] * (kernel[axis] - 1) + 1
            stride = strides[axis] * step
            outputs = np.arange((size[axis] + pads[axis] + pads[axis + 2] - span) // stride + 1) * stride
            read = outputs[None, :] + np.arange(kernel[axis])[:, None] * dilations[axis] - pads[axis]  # (taps, out)
            axes.append(np.where((read >= 0) & (read < size[axis]), read, -1))
        rows, columns = axes
        positions = size[0] * size[1]
        inside = (rows[:, None, :, None] >= 0) & (columns[None, :, None, :] >= 0)
        reads = np.where(inside, rows[:, None, :, None] * size[1] + columns[None, :, None, :], positions)
        return cls(reads.reshape(kernel[0] * kernel[1], -1), positions)

    def project(self, gram: np.ndarray, total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """H's Gram and sum from the spatial ones: entry (i, j) is Σ over output positions p of
        gram[reads[i, p], reads[j, p]], the padding reading zeros; one GEMM with the 0/1 matrix that counts the
        positions at which each spatial pair meets each tap pair."""
        k, positions = len(self.reads), self.positions
        first, second = np.broadcast_arrays(self.reads[:, None, :], self.reads[None, :, :])  # (K, K, P)
        taps = np.broadcast_to(np.arange(k * k).reshape(k, k, 1), first.shape)
        inside = (first < positions) & (second < positions)
        counts = np.zeros((positions * positions, k * k))
        np.add.at(counts, (first[inside] * positions + second[inside], taps[inside]), 1.0)
        hessian = (gram.reshape(len(gram), -1) @ counts).reshape(-1, k, k)
        tap_counts = np.zeros((positions, k))
        inside = self.reads < positions
        np.add.at(tap_counts, (self.reads[inside], np.nonzero(inside)[0]), 1.0)
        return hessian, total @ tap_counts


@dataclass(frozen=True)
class LayerInput:
    """A layer's input as the Hessian nodes read it: float values and, where it is a per-tensor dequantized
    uint8 tensor, those integers with their scale and zero point (values = scale·(integers − zero))."""

    values: str
    integers: str | None = None
    scale: float = 1.0
    zero: int = 0


@dataclass(frozen=True)
class Sampling:
    """Which of a layer's rows its Hessian sees: every ``step``-th output position in each spatial direction,
    on the first ``images`` images."""

    step: int
    images: int
    rows: int | None  # the rows per image it sees, where shape inference tells
    input_size: tuple[int, int] | None = None  # the layer input's (H, W), where shape inference tells


def one_hot_kernels(channels: int, kh: int, kw: int) -> np.ndarray:
    """(channels·kh·kw, 1, kh, kw): output channel c·kh·kw + i·kw + j copies tap (i, j) of input channel c."""
    taps = kh * kw
    kernels = np.zeros((channels * taps, 1, kh, kw), np.float32)
    kernels[np.arange(channels * taps), 0, np.tile(np.arange(taps) // kw, channels),
            np.tile(np.arange(taps) % kw, channels)] = 1.0
    return kernels


def explicit_pads(node: onnx.NodeProto) -> list[int] | None:
    """The layer's (top, left, bottom, right) pads, or None where ``auto_pad`` leaves them to the input shape."""
    auto_pad = attribute(node, "auto_pad", b"NOTSET")
    if auto_pad in (b"VALID", "VALID"):
        return [0, 0, 0, 0]
    if auto_pad not in (b"NOTSET", "NOTSET"):
        return None
    return list(attribute(node, "pads", [0, 0, 0, 0]))


def is_pointwise(node: onnx.NodeProto, kh: int, kw: int) -> bool:
    pads = explicit_pads(node)
    strides = attribute(node, "strides", [1, 1])
    return (kh, kw) == (1, 1) and list(strides) == [1, 1] and (pads is None or not any(pads))


class HessianGraph:
    """Appends the Hessian nodes of each layer to a copy of the model, given each layer's sampling and the
    batch size the session will run."""

    def __init__(self, model: onnx.ModelProto, sampling: dict[str, Sampling], batch_size: int):
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        del self.model.graph.output[:]
        self.steps = {name: plan.step for name, plan in sampling.items()}
        self.rows_per_image = {name: plan.rows for name, plan in sampling.items() if plan.rows is not None}
        self.input_sizes = {name: plan.input_size for name, plan in sampling.items() if plan.input_size is not None}
        self.batch_size = batch_size
        self.slices: set[str] = set()
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

    def _reduce_sum(self, data: str, axes: list[int], output: str, keepdims: bool = False) -> str:
        return self._node("ReduceSum", [data, self._ints(f"{output}.axes", axes)], output, keepdims=int(keepdims))

    def _ints(self, name: str, values: list[int]) -> str:
        return self._constant(name, np.array(values, np.int64))

    def _outputs(self, gram: str | tuple[tuple[str, int, int], ...], total: str, shaped: str,
                 row_axes: tuple[int, ...], gram_scale: float | None = None,
                 taps: TapReads | None = None) -> HessianOutputs:
        """Graph outputs for the Gram blocks (int32 where ``gram_scale`` is given, float otherwise), the sum and
        the row count."""
        blocks = ((gram, 0, 0),) if isinstance(gram, str) else gram
        shape = self._node("Shape", [shaped], f"{shaped}.shape")
        gram_type = TensorProto.FLOAT if gram_scale is None else TensorProto.INT32
        self.model.graph.output.extend([helper.make_tensor_value_info(name, gram_type, None)
                                        for name, _, _ in blocks])
        self.model.graph.output.extend([helper.make_tensor_value_info(total, TensorProto.FLOAT, None),
                                        helper.make_tensor_value_info(shape, TensorProto.INT64, None)])
        return HessianOutputs(blocks, total, shape, row_axes, 1.0 if gram_scale is None else gram_scale, taps)

    def _spatial_gram(self, prefix: str, x: str, channels: int, taps: TapReads) -> HessianOutputs:
        """A depthwise layer's spatial Gram (C, H·W, H·W) over the batch, one GEMM per channel with the images as
        the inner dimension, and its (C, H·W) sum; ``taps`` turns them into H after the pass."""
        flat = self._node("Reshape", [x, self._ints(f"{prefix}.flat_shape", [0, channels, -1])], f"{prefix}.flat")
        positions_first = self._node("Transpose", [flat], f"{prefix}.positions", perm=[1, 2, 0])  # (C, H·W, N)
        images_first = self._node("Transpose", [flat], f"{prefix}.images", perm=[1, 0, 2])  # (C, N, H·W)
        gram = self._node("MatMul", [positions_first, images_first], f"{prefix}.gram")
        return self._outputs(gram, self._reduce_sum(flat, [0], f"{prefix}.sum"), flat, (0,), taps=taps)

    def _depthwise(self, prefix: str, patches: str, channels: int, k: int) -> HessianOutputs:
        """Gram matrices of a depthwise layer from its patch planes (N, C·K, Ho, Wo): one small GEMM per image and
        channel over the (K, rows) planes, batched, and a ReduceSum over the images."""
        planes = self._node("Reshape", [patches, self._ints(f"{prefix}.planes_shape", [0, channels, k, -1])],
                            f"{prefix}.planes")  # (N, C, K, rows)
        transposed = self._node("Transpose", [planes], f"{prefix}.planes_t", perm=[0, 1, 3, 2])
        per_image = self._node("MatMul", [planes, transposed], f"{prefix}.per_image_gram")  # (N, C, K, K)
        gram = self._reduce_sum(per_image, [0], f"{prefix}.gram")
        # The contiguous last axis first: one ReduceSum over axes (0, 2, 3) was slower.
        per_image_sum = self._reduce_sum(planes, [3], f"{prefix}.per_image_sum")
        total = self._reduce_sum(per_image_sum, [0], f"{prefix}.sum")
        return self._outputs(gram, total, planes, (0, 3))

    def _input(self, name: str, prefix: str, step: int) -> LayerInput:
        """The layer input ``name`` for the Hessian nodes, at every ``step``-th position in H and W. A
        DequantizeLinear's output is recomputed from its integers (Slice first, then Cast, Sub, Mul: the same
        float values), so that the DequantizeLinear keeps the layer as its only consumer and ORT still fuses the
        layer into its int8 kernel, and no Hessian node is fused into one."""
        producer = self.index.producer.get(name)
        dequantize = producer is not None and producer.op_type == "DequantizeLinear"
        source = producer.input[0] if dequantize else name
        if step > 1:
            source = self._node("Slice", [source, self._ints(f"{prefix}.starts", [0, 0]),
                                          self._ints(f"{prefix}.ends", [INT64_MAX] * 2),
                                          self._ints(f"{prefix}.axes", [2, 3]),
                                          self._ints(f"{prefix}.steps", [step, step])], f"{prefix}.sampled")
        if not dequantize:
            return LayerInput(source)
        zero = (self.index.constant(producer.input[2]) if len(producer.input) > 2 and producer.input[2]
                else np.zeros(1, np.uint8))
        scale = self.index.constant(producer.input[1])
        if scale.size != 1 or zero.size != 1:
            raise CalibrationError(f"gptq: '{name}' is dequantized per channel; the Hessians need per-tensor inputs")
        values = self._node("Cast", [source], f"{prefix}.integers", to=TensorProto.FLOAT)
        zero_point = self._constant(f"{prefix}.zero_point", zero.astype(np.float32).reshape(()))
        shifted = self._node("Sub", [values, zero_point], f"{prefix}.shifted")
        dequantized = self._node("Mul", [shifted, self._constant(f"{prefix}.scale",
                                                                 scale.astype(np.float32).reshape(()))],
                                 f"{prefix}.input")
        if zero.dtype != np.uint8:
            return LayerInput(dequantized)
        return LayerInput(dequantized, source, float(scale.reshape(())), int(zero.reshape(())))

    def add(self, node: onnx.NodeProto) -> HessianOutputs:
        """The layer's Gram matrices and row sums, as graph outputs."""
        prefix = f"{node.name}.hessian"
        if node.op_type == "Gemm":
            if attribute(node, "transA", 0):
                raise CalibrationError(f"Gemm '{node.name}': gptq does not handle transA=1")
            x = self._input(node.input[0], prefix, 1).values
            rows = self._node("Transpose", [x], f"{prefix}.rows_t", perm=[1, 0])  # (K, N)
            patches = self._node("Unsqueeze", [rows, self._ints(f"{prefix}.unsqueeze", [0])],
                                 f"{prefix}.patches")  # (1, K, N)
            return self._gram(prefix, patches, 1, layer_columns(self.index, node))
        if node.op_type != "Conv":
            raise CalibrationError(f"gptq: '{node.name}' is a {node.op_type}, not a Conv or Gemm")
        weight = layer_weight(self.index, node)
        if weight.ndim != 4:
            raise CalibrationError(f"Conv '{node.name}': gptq handles 2-D convolutions only")
        kh, kw = weight.shape[2:]
        groups = conv_group(node)
        channels = weight.shape[1] * groups
        k = weight.shape[1] * kh * kw
        step = self.steps[node.name]
        pointwise = is_pointwise(node, kh, kw)
        x = self._input(node.input[0], prefix, step if pointwise else 1)
        size, pads = self.input_sizes.get(node.name), explicit_pads(node)
        if weight.shape[1] == 1 and size is not None and pads is not None:
            taps = TapReads.of(node, size, (kh, kw), pads, step)
            positions = size[0] * size[1]
            if (positions**2 <= SPATIAL_GRAM_RATIO * k * taps.reads.shape[1]
                    and channels * positions**2 <= SPATIAL_GRAM_ENTRIES):
                return self._spatial_gram(prefix, x.values, channels, taps)
        source = x.values
        if not pointwise:
            attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute
                          if a.name in ("pads", "dilations", "auto_pad")}
            strides = [s * step for s in attribute(node, "strides", [1, 1])]
            kernels = self._constant(f"{prefix}.one_hot", one_hot_kernels(channels, kh, kw))
            source = self._node("Conv", [x.values, kernels], f"{prefix}.im2col", group=channels,
                                kernel_shape=[kh, kw], strides=strides, **attributes)
            if weight.shape[1] == 1:
                return self._depthwise(prefix, source, channels, k)
        if groups == 1 and x.integers is not None and self._fits_int32(node, x.zero):
            integers = x.integers
            if not pointwise:  # the patches of the dequantized values are exact multiples of the scale
                integers = self._node("QuantizeLinear", [source, self._constant(f"{prefix}.patch_scale", np.float32(
                    x.scale)), self._constant(f"{prefix}.patch_zero", np.uint8(x.zero))], f"{prefix}.patch_integers")
            return self._integer_gram(prefix, integers, source, k, x)
        shaped = self._node("Reshape", [source, self._ints(f"{prefix}.shape4", [0, groups, k, -1])],
                            f"{prefix}.per_image")  # (N, groups, K, H·W)
        moved = self._node("Transpose", [shaped], f"{prefix}.moved", perm=[1, 2, 0, 3])  # (groups, K, N, H·W)
        patches = self._node("Reshape", [moved, self._ints(f"{prefix}.shape3", [groups, k, -1])],
                             f"{prefix}.patches")  # (groups, K, rows)
        return self._gram(prefix, patches, groups, k)

    def _fits_int32(self, node: onnx.NodeProto, zero: int) -> bool:
        """Whether Σ(q − z)² over one batch's rows of the layer fits in int32 whatever the integers are."""
        largest = max(zero, 255 - zero) ** 2
        return self.batch_size * self.rows_per_image.get(node.name, INT64_MAX) * largest < 2**31

    def _integer_gram(self, prefix: str, integers: str, values: str, k: int, x: LayerInput) -> HessianOutputs:
        """A dense convolution's Gram Σ(q − z)(q − z)ᵀ from its uint8 patches (N, K, H, W), MatMulInteger on
        (K, rows) × (rows, K), exact in int32 (``_fits_int32``) and faster than float32 GEMMs; as blocks on and
        above the diagonal (``gram_blocks``). The sums come from the float patches ``values``."""
        per_image = self._node("Reshape", [integers, self._ints(f"{prefix}.shape3", [0, k, -1])],
                               f"{prefix}.per_image")  # (N, K, H·W)
        rows_first = self._node("Reshape", [self._node("Transpose", [per_image], f"{prefix}.moved", perm=[0, 2, 1]),
                                            self._ints(f"{prefix}.shape2", [-1, k])], f"{prefix}.rows")  # (rows, K)
        columns_first = self._node("Transpose", [rows_first], f"{prefix}.columns", perm=[1, 0])  # (K, rows)
        zero = self._constant(f"{prefix}.gram_zero", np.uint8(x.zero))
        gram = tuple((self._node("MatMulInteger", [self._slice(columns_first, rows, 0, k, f"{prefix}.left"),
                                                   self._slice(rows_first, columns, 1, k, f"{prefix}.right"),
                                                   zero, zero], f"{prefix}.gram{rows[0]}_{columns[0]}"),
                      rows[0], columns[0]) for rows, columns in gram_blocks(0, k))
        flat = self._node("Reshape", [values, self._ints(f"{prefix}.values_shape", [0, k, -1])], f"{prefix}.values")
        per_image_sum = self._reduce_sum(flat, [2], f"{prefix}.per_image_sum")  # (N, K)
        total = self._reduce_sum(per_image_sum, [0], f"{prefix}.sum", keepdims=True)  # (1, K)
        return self._outputs(gram, total, rows_first, (0,), x.scale**2)

    def _slice(self, data: str, span: tuple[int, int], axis: int, size: int, prefix: str) -> str:
        """``data`` between ``span`` along ``axis`` (of ``size``), one Slice node per distinct span."""
        if span == (0, size):
            return data
        output = f"{prefix}{span[0]}_{span[1]}"
        if output not in self.slices:
            self.slices.add(output)
            self._node("Slice", [data, self._ints(f"{output}.starts", [span[0]]),
                                 self._ints(f"{output}.ends", [span[1]]), self._ints(f"{output}.axes", [axis])], output)
        return output

    def _gram(self, prefix: str, patches: str, groups: int, k: int) -> HessianOutputs:
        """Gram matrices and sums of (groups, K, rows) patches. One group's Gram is (K, K) (numpy adds the group
        axis: an Unsqueeze here copied every Gram matrix), computed as the blocks on and above the diagonal
        (``gram_blocks``): the GEMMs below the diagonal would only repeat them transposed."""
        gram: str | tuple[tuple[str, int, int], ...]
        if groups == 1:
            flat = self._node("Squeeze", [patches, self._ints(f"{prefix}.squeeze", [0])], f"{prefix}.flat")
            gram = tuple((self._node("Gemm", [self._slice(flat, rows, 0, k, f"{prefix}.part"),
                                              self._slice(flat, columns, 0, k, f"{prefix}.part")],
                                     f"{prefix}.gram{rows[0]}_{columns[0]}", transB=1), rows[0], columns[0])
                         for rows, columns in gram_blocks(0, k))
        else:
            transposed = self._node("Transpose", [patches], f"{prefix}.patches_t", perm=[0, 2, 1])
            gram = self._node("MatMul", [patches, transposed], f"{prefix}.gram")
        return self._outputs(gram, self._reduce_sum(patches, [2], f"{prefix}.sum"), patches, (2,))


def gram_blocks(start: int, end: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The (rows, columns) spans of the blocks on and above the diagonal that make up the Gram of columns
    [start, end): a span of at least 2·``GRAM_BLOCK`` columns splits in halves, one GEMM for the block between
    them and each half recursively, so the off-diagonal GEMMs stay large and the diagonal ones (computed whole)
    hold about 1/2^depth of the work."""
    if end - start < 2 * GRAM_BLOCK:
        return [((start, end), (start, end))]
    middle = (start + end) // 2
    return [((start, middle), (middle, end)), *gram_blocks(start, middle), *gram_blocks(middle, end)]


def layer_columns(index: GraphIndex, node: onnx.NodeProto) -> int:
    """K: the layer's input columns per group (a Gemm's input width, a Conv's C/groups·kh·kw)."""
    weight = layer_weight(index, node)
    if node.op_type == "Gemm":
        return int(weight.shape[1] if attribute(node, "transB", 0) else weight.shape[0])
    return int(np.prod(weight.shape[1:]))


def layer_weight(index: GraphIndex, node: onnx.NodeProto) -> np.ndarray:
    """The layer's weight: a constant, or the constant a DequantizeLinear reads."""
    name = node.input[1]
    if not index.is_constant(name) and name in index.producer and index.producer[name].op_type == "DequantizeLinear":
        name = index.producer[name].input[0]
    return index.constant(name)
