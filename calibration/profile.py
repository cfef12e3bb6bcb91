"""One streaming pass over the calibration images, collecting per-tensor statistics.

Each profiled tensor keeps a running min/max, the sum of each image's own min and max (for
``mean_minmax``) and, when a histogram-based range method needs it, a histogram whose range
grows by exact power-of-two merges, filled from a fixed-stride sample of each tensor.
Memory is bounded by the tensor count times the bin count, whatever the number of images.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from tqdm import tqdm

from calibration.graph import extrema_names, input_name, make_session, with_extrema_outputs, with_outputs

log = logging.getLogger(__name__)

# Histograms see a fixed-stride sample of about this many elements per image and tensor (min and
# max always see every element, so the histogram's range is exact). 500 images then give each
# tensor's histogram some 8·10^6 samples, far more than the 99.99th percentile needs.
HISTOGRAM_SAMPLES_PER_IMAGE = 1 << 14


@dataclass
class Histogram:
    """Counts over [low, low + width·bins); the range doubles (merging bin pairs) to fit new data."""

    bins: int
    low: float = 0.0
    width: float = 0.0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def high(self) -> float:
        return self.low + self.width * self.bins

    @property
    def edges(self) -> np.ndarray:
        return self.low + self.width * np.arange(self.bins + 1)

    def _grow(self, low: float, high: float) -> None:
        while low < self.low or high >= self.high:
            merged = self.counts.reshape(-1, 2).sum(axis=1)
            if high >= self.high:  # extend upwards: old bins fill the lower half
                self.counts = np.concatenate([merged, np.zeros(self.bins // 2, np.int64)])
            else:  # extend downwards: old bins fill the upper half
                self.counts = np.concatenate([np.zeros(self.bins // 2, np.int64), merged])
                self.low -= self.width * self.bins
            self.width *= 2.0

    def add(self, values: np.ndarray, low: float, high: float) -> None:
        if self.width == 0.0:
            span = max(high - low, 1e-12)
            self.low, self.width = low, span * (1.0 + 1e-6) / self.bins
            self.counts = np.zeros(self.bins, np.int64)
        self._grow(low, high)
        scaled = np.subtract(values, np.float32(self.low), dtype=np.float32)
        scaled *= np.float32(1.0 / self.width)
        index = scaled.astype(np.int32).ravel()
        np.clip(index, 0, self.bins - 1, out=index)
        self.counts += np.bincount(index, minlength=self.bins)


@dataclass
class TensorStats:
    minimum: float = np.inf
    maximum: float = -np.inf
    sum_image_min: float = 0.0
    sum_image_max: float = 0.0
    images: int = 0
    histogram: Histogram | None = None

    @property
    def mean_min(self) -> float:
        return self.sum_image_min / max(self.images, 1)

    @property
    def mean_max(self) -> float:
        return self.sum_image_max / max(self.images, 1)

    def update_extrema(self, image_min: np.ndarray, image_max: np.ndarray) -> tuple[float, float]:
        """Fold in one batch's per-image minima and maxima; returns the batch's (min, max)."""
        self.sum_image_min += float(image_min.sum(dtype=np.float64))
        self.sum_image_max += float(image_max.sum(dtype=np.float64))
        self.images += len(image_min)
        low, high = float(image_min.min()), float(image_max.max())
        self.minimum, self.maximum = min(self.minimum, low), max(self.maximum, high)
        return low, high

    def update(self, batch: np.ndarray) -> None:
        flat = batch.reshape(batch.shape[0], -1)
        low, high = self.update_extrema(flat.min(axis=1), flat.max(axis=1))
        if self.histogram is not None:
            stride = max(1, flat.shape[1] // HISTOGRAM_SAMPLES_PER_IMAGE)
            self.histogram.add(flat[:, ::stride], low, high)


class _BoundRunner:
    """Runs full batches into preallocated output buffers (ORT I/O binding), two sets alternating.

    Reusing buffers avoids allocating and page-faulting hundreds of MB per batch, which otherwise
    costs more than the inference itself; two sets let one batch's statistics overlap the next
    batch's inference.
    """

    def __init__(self, session: ort.InferenceSession, feed: str, tensors: Sequence[str],
                 shapes: Sequence[tuple[int, ...]]):
        self.session, self.feed = session, feed
        self.buffers = [[np.empty(shape, np.float32) for shape in shapes] for _ in range(2)]
        self.bindings = []
        for buffers in self.buffers:
            binding = session.io_binding()
            for name, buffer in zip(tensors, buffers):
                binding.bind_output(name, "cpu", 0, np.float32, list(buffer.shape), buffer.ctypes.data)
            self.bindings.append(binding)

    def run(self, batch: np.ndarray, slot: int) -> list[np.ndarray]:
        binding = self.bindings[slot]
        binding.bind_cpu_input(self.feed, np.ascontiguousarray(batch))
        self.session.run_with_iobinding(binding)
        return self.buffers[slot]


def _profile_extrema(model: onnx.ModelProto, tensors: Sequence[str], images: np.ndarray, batch_size: int,
                     show_progress: bool) -> dict[str, TensorStats]:
    """Min/max statistics computed inside the ORT graph: only per-image minima and maxima leave it.

    Without histograms nothing needs the activations themselves, so none is copied out of ORT,
    which keeps its layout optimizations and costs little more than plain inference.
    """
    session = make_session(with_extrema_outputs(model, tensors), optimize=True)
    feed = input_name(model)
    names = [name for t in tensors for name in extrema_names(t)]
    stats = {name: TensorStats() for name in tensors}
    with tqdm(total=len(images), desc="profile", unit="img", disable=not show_progress) as progress:
        for start in range(0, len(images), batch_size):
            batch = np.ascontiguousarray(images[start : start + batch_size])
            values = session.run(names, {feed: batch})
            for k, name in enumerate(tensors):
                stats[name].update_extrema(values[2 * k], values[2 * k + 1])
            progress.update(len(batch))
    return stats


def profile_activations(model: onnx.ModelProto, tensors: Sequence[str], images: np.ndarray, batch_size: int,
                        histogram_bins: int | None, show_progress: bool = True) -> dict[str, TensorStats]:
    """Statistics of ``tensors`` over ``images``, streamed batch by batch.

    Without histograms the reductions run inside the ORT graph. With histograms, memory holds two
    batches of every profiled tensor (the bound output buffers), independent of the image count.
    """
    if histogram_bins is None:
        return _profile_extrema(model, tensors, images, batch_size, show_progress)
    feed = input_name(model)
    outputs = [t for t in tensors if t != feed]  # the input's statistics come from the batches themselves
    session = make_session(with_outputs(model, outputs), optimize=True)
    stats = {
        name: TensorStats(histogram=Histogram(histogram_bins) if histogram_bins else None) for name in tensors
    }

    def update(values: Sequence[np.ndarray], batch: np.ndarray) -> None:
        if feed in stats:
            stats[feed].update(batch)
        for name, value in zip(outputs, values):
            stats[name].update(value)

    progress = tqdm(total=len(images), desc="profile", unit="img", disable=not show_progress)
    full_end = len(images) // batch_size * batch_size
    if full_end:
        probe = session.run(outputs, {feed: np.ascontiguousarray(images[:1])})  # output shapes only
        runner = _BoundRunner(session, feed, outputs, [(batch_size, *p.shape[1:]) for p in probe])
        del probe
        starts = list(range(0, full_end, batch_size))
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(runner.run, images[0:batch_size], 0)
            for k, start in enumerate(starts):
                values = pending.result()
                if k + 1 < len(starts):
                    nxt = starts[k + 1]
                    pending = pool.submit(runner.run, images[nxt : nxt + batch_size], (k + 1) % 2)
                update(values, images[start : start + batch_size])
                progress.update(batch_size)
    if full_end < len(images):
        rest = np.ascontiguousarray(images[full_end:])
        update(session.run(outputs, {feed: rest}), rest)
        progress.update(len(rest))
    progress.close()
    return stats


def profile_channel_ranges(model: onnx.ModelProto, tensors: Sequence[str], images: np.ndarray,
                           batch_size: int) -> dict[str, np.ndarray]:
    """Per-channel (axis 1) max|x| of each tensor, averaged over the images like ``mean_minmax``."""
    if not tensors:
        return {}
    session = make_session(with_outputs(model, list(tensors)), optimize=True)
    feed = input_name(model)
    sums: dict[str, np.ndarray] = {}
    for start in range(0, len(images), batch_size):
        batch = np.ascontiguousarray(images[start : start + batch_size])
        for name, value in zip(tensors, session.run(list(tensors), {feed: batch})):
            per_image = np.abs(value).reshape(value.shape[0], value.shape[1], -1).max(axis=2).sum(axis=0)
            sums[name] = sums[name] + per_image if name in sums else per_image.astype(np.float64)
    return {name: total / len(images) for name, total in sums.items()}
