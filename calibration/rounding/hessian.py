"""GPTQ's input Hessians H = Σ x̃x̃ᵀ (x̃ = [x; 1]) computed inside ONNX Runtime, in the pass that produces the
quantized inputs (the int8 model itself, ``calibration.rounding.gptq.layer_hessians``), with the nodes of
``calibration.rounding.hessian_graph``. Only the Gram matrices and sums leave ORT, per batch, and are accumulated
across batches in float64.

Not every row is needed: a layer with many output positions samples every second (fourth, …) row and column of
them, and a layer whose Hessian has few columns leaves the pass once it has seen enough images for
``ROWS_PER_COLUMN`` rows per column (``_sampling``). Figures: results/experiments/gptq_speed.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from tqdm import tqdm

from calibration.graph.index import GraphIndex, input_name
from calibration.graph.session import make_session
from calibration.rounding.hessian_graph import HessianGraph, HessianOutputs, Sampling, explicit_pads, layer_columns

# A layer whose output has at least 4× this many positions per image samples every second row and column of them
# (repeatedly): a Hessian of at most 1153 columns still sees some 390 000 rows over 500 images.
MIN_ROWS_PER_IMAGE = 28 * 28
# A layer's Hessian sees at least this many rows per column (the images it needs, up to all of them): a depthwise
# 3×3 layer's 10×10 Hessian settles on far fewer images than a 1281-column classifier's (the rates measured:
# results/experiments/gptq_speed.md).
ROWS_PER_COLUMN = 1000
# A model with a Gram of this many columns or more (ResNet50's 3×3 layers: 4608) runs the pass on batches of at least
# LARGE_GRAM_BATCH images: writing and accumulating each batch's (K, K) blocks costs as much as the GEMMs over a few
# images' rows.
LARGE_GRAM_COLUMNS = 2048
LARGE_GRAM_BATCH = 16


def _spatial_sizes(model: onnx.ModelProto, image_shape: tuple[int, ...]) -> dict[str, tuple[int, int]]:
    """(H, W) of every 4-D tensor whose spatial size shape inference can tell for images of ``image_shape``."""
    inferred = onnx.ModelProto()
    inferred.CopyFrom(model)
    shape = next(i for i in inferred.graph.input if i.name == input_name(inferred)).type.tensor_type.shape
    del shape.dim[:]
    shape.dim.add().dim_param = "batch"
    for size in image_shape[1:]:
        shape.dim.add().dim_value = size
    inferred = onnx.shape_inference.infer_shapes(inferred)
    sizes = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 4 and all(d.HasField("dim_value") for d in dims[2:]):
            sizes[value.name] = (dims[2].dim_value, dims[3].dim_value)
    return sizes


def row_stride(output_rows: int) -> int:
    """The spacing of the output positions a layer's Hessian samples in each spatial direction: the largest
    power of two that leaves at least ``MIN_ROWS_PER_IMAGE`` positions per image."""
    stride = 1
    while output_rows // (4 * stride * stride) >= MIN_ROWS_PER_IMAGE:
        stride *= 2
    return stride


def _sampling(index: GraphIndex, layers: list[onnx.NodeProto], images: np.ndarray, batch_size: int,
              sample_rows: bool) -> dict[str, Sampling]:
    """Each layer's position step (``row_stride``) and image count: enough images for ``ROWS_PER_COLUMN`` rows per
    Hessian column, rounded up to a power of two times the batch size, or all of them."""
    sizes = _spatial_sizes(index.model, images.shape)
    plan = {}
    for node in layers:
        rows: int | None
        if node.op_type == "Gemm" or node.output[0] not in sizes:
            step, rows = 1, 1 if node.op_type == "Gemm" else None
        else:
            # auto_pad's pads depend on the stride, so a layer with it keeps every position.
            output_rows = int(np.prod(sizes[node.output[0]]))
            step = row_stride(output_rows) if sample_rows and explicit_pads(node) is not None else 1
            rows = len(range(0, sizes[node.output[0]][0], step)) * len(range(0, sizes[node.output[0]][1], step))
        input_size = sizes.get(node.input[0])
        if not sample_rows:
            plan[node.name] = Sampling(1, len(images), rows, input_size)
            continue
        columns = layer_columns(index, node) + 1
        count = len(images)
        if rows:
            count = batch_size
            while count * rows < ROWS_PER_COLUMN * columns and count < len(images):
                count *= 2
        plan[node.name] = Sampling(step, min(count, len(images)), rows, input_size)
    return plan


def _hessian_session(model: onnx.ModelProto, layers: list[onnx.NodeProto], sampling: dict[str, Sampling],
                     batch_size: int, optimize: bool) -> tuple[ort.InferenceSession, dict[str, HessianOutputs]]:
    builder = HessianGraph(model, sampling, batch_size)
    outputs = {node.name: builder.add(node) for node in layers}
    # Without ORT's arena: the pass holds many branches' intermediates, and the arena kept their high-water mark.
    return make_session(builder.model, optimize=optimize, arena=False), outputs


def input_hessians(model: onnx.ModelProto, layer_names: Sequence[str], images: np.ndarray,
                   batch_size: int, show_progress: bool = True, sample_rows: bool = True, optimize: bool = False
                   ) -> dict[str, np.ndarray]:
    """Each named layer's H = Σ x̃x̃ᵀ over its input rows (x̃ = [x; 1]) per group, (groups, K+1, K+1), over
    ``images`` through ``model``, streamed batch by batch (products per batch inside ORT, float32 or exact
    int32, accumulated in float64). With ``sample_rows`` each layer sees the rows ``_sampling`` gives it; a layer
    leaves the pass once it has seen its images.

    The layers are looked up in ``model`` itself, so in a QDQ model their inputs are the dequantized tensors the
    int8 layers read; ``optimize`` runs it with ORT's fused int8 kernels (``HessianGraph`` keeps them fused)."""
    wanted = set(layer_names)
    layers = [n for n in model.graph.node if n.name in wanted]
    index = GraphIndex.build(model)
    if max((layer_columns(index, n) for n in layers), default=0) >= LARGE_GRAM_COLUMNS:
        batch_size = max(batch_size, LARGE_GRAM_BATCH)
    sampling = _sampling(index, layers, images, batch_size, sample_rows)
    feed = input_name(model)
    sessions: dict[int, tuple[ort.InferenceSession, dict[str, HessianOutputs]]] = {}
    grams: dict[str, np.ndarray] = {}
    sums: dict[str, np.ndarray] = {}
    rows: dict[str, int] = {}
    layouts: dict[str, HessianOutputs] = {}
    with tqdm(total=len(images), desc="gptq inputs", unit="img", disable=not show_progress) as progress:
        for start in range(0, len(images), batch_size):
            batch = np.ascontiguousarray(images[start : start + batch_size])
            active = [node for node in layers if sampling[node.name].images > start]
            if not active:  # every layer has seen its images
                progress.update(len(images) - start)
                break
            if len(active) not in sessions:  # the active layers only ever shrink
                sessions = {len(active): _hessian_session(model, active, sampling, batch_size, optimize)}
            session, outputs = sessions[len(active)]
            names = [o.name for o in session.get_outputs()]
            values = dict(zip(names, session.run(names, {feed: batch})))
            for name, out in outputs.items():
                if name not in grams:
                    grams[name] = np.zeros(values[out.total].shape + values[out.total].shape[-1:], np.float64)
                    sums[name] = np.zeros(values[out.total].shape, np.float64)
                    rows[name] = 0
                    layouts[name] = out
                for block, row, column in out.gram:
                    gram = values[block]  # (K, K) blocks broadcast over the one group
                    grams[name][..., row : row + gram.shape[-2], column : column + gram.shape[-1]] += gram
                sums[name] += values[out.total]
                rows[name] += out.rows(values[out.shape])
            progress.update(len(batch))
    # Each layer's sums are released as its H is made: a spatial Gram holds (C, H·W, H·W) of them.
    return {name: _augmented(*layouts[name].hessian_parts(grams.pop(name), sums.pop(name)), rows[name])
            for name in list(grams)}


def _augmented(gram: np.ndarray, total: np.ndarray, rows: int) -> np.ndarray:
    """[[XᵀX, Σx], [Σxᵀ, rows]] per group."""
    groups, k, _ = gram.shape
    hessian = np.empty((groups, k + 1, k + 1))
    # The upper triangle, mirrored: blocks below the diagonal were never computed, and float32 products need not
    # be symmetric within a block.
    gram = np.triu(gram)
    hessian[:, :k, :k] = gram
    hessian[:, :k, :k] += gram.transpose(0, 2, 1)
    diagonal = np.arange(k)
    hessian[:, diagonal, diagonal] -= gram[:, diagonal, diagonal]
    hessian[:, :k, k] = total
    hessian[:, k, :k] = total
    hessian[:, k, k] = rows
    return hessian
