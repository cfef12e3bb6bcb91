"""Segment-by-segment execution with streamed per-channel means, for sequential bias correction.

Sequential bias correction needs, for each weighted layer in graph order, the per-channel mean of that
layer's output over the images, computed after every earlier layer's shift was applied. Holding every
live tensor for all images between segments costs several GiB on MobileNetV2 (the 112×112 expansions of its
first blocks, times every image: results/experiments/bias_correction.md).

Here the tensors live after a segment are kept for all images only where they fit ``budget_bytes``
(a checkpoint). Otherwise each later layer's means are recomputed batch by batch from the latest
checkpoint, through the segments since, applying their known shifts to each batch. Every segment runs
on the same ``BATCH_SIZE``-image slices as before and every shift is subtracted from the same float32 output, so
the outputs are bit-identical to holding everything; only the mean is accumulated per batch (float64).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort

from calibration.graph.index import GraphIndex
from calibration.graph.outputs import segment_model
from calibration.graph.session import make_session
from workload.errors import CalibrationError

# Images per segment run. Every segment session stays alive until a checkpoint, each holding its batch's
# activations: batches of 4 peaked lower and ran faster than 16 (results/experiments/bias_correction.md).
BATCH_SIZE = 4
CHECKPOINT_BYTES = 192 * 2**20  # live tensors kept for all images; measured peaks in results/experiments/


def channel_sums(values: np.ndarray) -> np.ndarray:
    """Sum over every axis but the channel axis (1), in float64."""
    axes = tuple(i for i in range(values.ndim) if i != 1)
    return values.sum(axis=axes, dtype=np.float64)


class SegmentRunner:
    """Runs a model one weighted layer at a time and returns each layer's per-channel output means.

    Segment k holds the nodes after layer k−1 up to and including layer k (graph order is topological).
    ``advance`` gives layer k's means over each group of images; ``apply_shift`` then subtracts that
    layer's correction from its output before any later segment reads it.
    """

    def __init__(self, model: onnx.ModelProto, layers: Sequence[str], images: np.ndarray, rows: np.ndarray,
                 groups: Sequence[int], budget_bytes: int = CHECKPOINT_BYTES):
        """``images[rows]`` are the images, read batch by batch (never copied out whole); ``groups`` split
        them into consecutive groups, each with its own means."""
        if sum(groups) != len(rows):
            raise CalibrationError(f"image groups {list(groups)} do not add up to {len(rows)} images")
        index = GraphIndex.build(model)
        graph_input = next(i.name for i in model.graph.input if i.name not in index.initializers)
        cut = {name: k for k, name in enumerate(layers)}
        segments: list[list[onnx.NodeProto]] = [[] for _ in layers]
        k = 0
        for node in model.graph.node:
            if k >= len(layers):
                break
            segments[k].append(node)
            if node.name in cut:
                if cut[node.name] != k:
                    raise CalibrationError(f"layer '{node.name}' is out of graph order")
                k += 1
        if k != len(layers):
            raise CalibrationError(f"layer '{layers[k]}' not found in the model")
        last_use: dict[str, int] = {}
        for k, nodes in enumerate(segments):
            for node in nodes:
                for name in node.input:
                    last_use[name] = k
        self._index, self._layers, self._segments, self._last_use = index, list(layers), segments, last_use
        self._groups = list(groups)
        self._budget = budget_bytes
        self._count = len(rows)
        self._input, self._images, self._rows = graph_input, images, np.asarray(rows)
        self._dtypes: dict[str, np.dtype] = {graph_input: np.dtype(images.dtype)}
        self._checkpoint: dict[str, np.ndarray] = {}
        self._after = -1  # the checkpoint holds the tensors live after this segment (-1: the images)
        self._sessions: dict[int, tuple[ort.InferenceSession, list[str], list[str]]] = {}
        self._shifts: dict[int, np.ndarray] = {}
        self._next = 0

    def _session(self, k: int) -> tuple[ort.InferenceSession, list[str], list[str]]:
        """Segment k's session, its inputs, and its outputs that later segments read (its layer's last)."""
        if k not in self._sessions:
            nodes = self._segments[k]
            produced = {o for n in nodes for o in n.output}
            inputs = list(dict.fromkeys(name for n in nodes for name in n.input
                                        if name and name not in produced and name not in self._index.initializers))
            missing = [name for name in inputs if name not in self._dtypes]
            if missing:
                raise CalibrationError(f"segment of layer '{self._layers[k]}' needs '{missing[0]}', never computed")
            layer_out = nodes[-1].output[0]
            outputs = [o for n in nodes for o in n.output if o and o != layer_out and self._last_use.get(o, -1) > k]
            outputs.append(layer_out)
            segment = segment_model(self._index, nodes, {name: self._dtypes[name] for name in inputs}, outputs,
                                    f"segment{k}")
            session = make_session(segment)
            self._sessions[k] = (session, inputs, outputs)
        return self._sessions[k]

    def _live_after(self, k: int, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: value for name, value in values.items() if self._last_use.get(name, -1) > k}

    def advance(self) -> list[np.ndarray]:
        """Run segment k = the next one; return its layer's per-channel output means, one per image group."""
        k = self._next
        if k > 0 and k - 1 not in self._shifts:
            raise CalibrationError(f"layer '{self._layers[k - 1]}' has no shift yet (call apply_shift)")
        chain = range(self._after + 1, k + 1)
        sums = [np.zeros(0)] * len(self._groups)
        bounds = np.cumsum([0, *self._groups])
        kept: dict[str, np.ndarray] | None = None
        for i in range(0, self._count, BATCH_SIZE):
            values = {name: value[i:i + BATCH_SIZE] for name, value in self._checkpoint.items()} if self._after >= 0 \
                else {self._input: np.ascontiguousarray(self._images[self._rows[i:i + BATCH_SIZE]])}
            for j in chain:
                session, inputs, outputs = self._session(j)
                values.update(zip(outputs, session.run(outputs, {name: values[name] for name in inputs})))
                layer_out = outputs[-1]
                self._dtypes.update((name, values[name].dtype) for name in outputs)
                if j < k:
                    shift = self._shifts[j]
                    values[layer_out] = values[layer_out] - shift.reshape(
                        (1, -1) + (1,) * (values[layer_out].ndim - 2)).astype(values[layer_out].dtype)
                values = self._live_after(j, values) | {layer_out: values[layer_out]}
            output = values[self._segments[k][-1].output[0]]
            for g in range(len(self._groups)):
                rows = output[max(bounds[g] - i, 0):max(bounds[g + 1] - i, 0)]
                part = channel_sums(rows)
                sums[g] = part if not sums[g].size else sums[g] + part
            if kept is None:
                live = self._live_after(k, values) | {self._segments[k][-1].output[0]: output}
                size = sum(v[0].nbytes for v in live.values()) * self._count
                # written in place: collecting batches and concatenating them held the checkpoint twice
                kept = {name: np.empty((self._count, *v.shape[1:]), v.dtype) for name, v in live.items()} \
                    if size <= self._budget else {}
            for name, array in kept.items():
                array[i:i + len(output)] = values[name]
        if kept:
            self._checkpoint = kept
            self._after = k
            for j in [j for j in self._sessions if j <= k]:
                del self._sessions[j]
        self._next += 1
        per_image = int(np.prod(output.shape[2:]))  # positions per channel in one image
        return [s / (n * per_image) if n else s for s, n in zip(sums, self._groups)]

    def apply_shift(self, shift: np.ndarray) -> None:
        """Subtract ``shift`` (per output channel) from the layer just advanced, before later layers read it."""
        k = self._next - 1
        self._shifts[k] = shift
        if self._after == k:
            layer_out = self._segments[k][-1].output[0]
            output = self._checkpoint[layer_out]
            output -= shift.reshape((1, -1) + (1,) * (output.ndim - 2)).astype(output.dtype)
