"""One streaming pass over the calibration images, collecting per-tensor statistics.

Each profiled tensor keeps a running min/max, the sum of each image's own min and max (for
``mean_minmax``) and, when a histogram-based range method needs it, a histogram whose range
grows by exact power-of-two merges, filled from a fixed-stride sample of each tensor.
Memory is bounded by the tensor count times the bin count, whatever the number of images.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from tqdm import tqdm

from calibration.graph.index import input_name
from calibration.graph.outputs import statistics_names, with_outputs, with_statistics_outputs
from calibration.graph.session import make_session

log = logging.getLogger(__name__)

# Histograms see a fixed-stride sample of about this many elements per image and tensor (min and
# max always see every element, so the histogram's range is exact). 500 images then give each
# tensor's histogram some 4·10^6 samples, far more than the 99.99th percentile needs.
HISTOGRAM_SAMPLES_PER_IMAGE = 1 << 13


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

    def update(self, image_min: np.ndarray, image_max: np.ndarray, sample: np.ndarray | None = None) -> None:
        """Fold in one batch: its per-image minima and maxima, and a sample of its values for the histogram."""
        self.sum_image_min += float(image_min.sum(dtype=np.float64))
        self.sum_image_max += float(image_max.sum(dtype=np.float64))
        self.images += len(image_min)
        low, high = float(image_min.min()), float(image_max.max())
        self.minimum, self.maximum = min(self.minimum, low), max(self.maximum, high)
        if self.histogram is not None and sample is not None:
            self.histogram.add(sample, low, high)

    def update_batch(self, batch: np.ndarray) -> None:
        """``update`` from a whole batch of values (every element goes into the histogram)."""
        flat = batch.reshape(batch.shape[0], -1)
        self.update(flat.min(axis=1), flat.max(axis=1), flat)


def profile_activations(model: onnx.ModelProto, tensors: Sequence[str], images: np.ndarray, batch_size: int,
                        histogram_bins: int | None, show_progress: bool = True) -> dict[str, TensorStats]:
    """Statistics of ``tensors`` over ``images``, streamed batch by batch.

    Everything is computed inside the ORT graph: per-image minima and maxima, and for histograms a
    fixed-stride sample of each image's elements. No full activation leaves ORT, so the pass costs
    little more than plain inference and holds no activation buffers of its own.
    """
    feed = input_name(model)
    strides = None
    if histogram_bins:
        probe = make_session(with_outputs(model, list(tensors)), optimize=True)
        shapes = probe.run(list(tensors), {feed: np.ascontiguousarray(images[:1])})
        strides = {t: max(1, v.size // HISTOGRAM_SAMPLES_PER_IMAGE) for t, v in zip(tensors, shapes)}
        del probe, shapes
    session = make_session(with_statistics_outputs(model, tensors, strides), optimize=True)
    names = [o.name for o in session.get_outputs()]
    stats = {name: TensorStats(histogram=Histogram(histogram_bins) if histogram_bins else None) for name in tensors}
    with tqdm(total=len(images), desc="profile", unit="img", disable=not show_progress) as progress:
        for start in range(0, len(images), batch_size):
            batch = np.ascontiguousarray(images[start : start + batch_size])
            values = dict(zip(names, session.run(names, {feed: batch})))
            for tensor, tensor_stats in stats.items():
                low, high, sample = statistics_names(tensor)
                tensor_stats.update(values[low], values[high], values.get(sample))
            progress.update(len(batch))
    return stats
