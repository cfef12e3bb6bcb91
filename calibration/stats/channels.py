"""One streaming pass that keeps each image's per-channel minimum and maximum of chosen tensors, and what follows
from them without another pass.

- CLE's per-channel ranges (``ChannelRanges``): each channel's max|x| = max(−min, max).
- ``profile``'s per-tensor statistics for ``minmax`` and ``mean_minmax`` (``ChannelStats.tensor_stats``): an
  image's minimum of a tensor is the least of its channel minima. CLE divides some tensors' channels by positive
  scales and leaves every other tensor as it was (up to float rounding), so the statistics of the equalized
  model follow from those of the model before it, channel by channel: the pass that CLE needs anyway is also
  profile's, and the search's CLE variants from one folded model share one pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from tqdm import tqdm

from calibration.graph.index import input_name
from calibration.graph.outputs import channel_reduction_name, with_channel_reductions
from calibration.graph.session import make_session
from calibration.stats.profile import TensorStats

EXTREMA = ("ReduceMin", "ReduceMax")


@dataclass(frozen=True)
class ChannelRanges:
    """Per-channel (axis 1) max|x| of one tensor over the calibration images."""

    mean_max: np.ndarray  # each image's own max, averaged over the images (like ``mean_minmax``)
    maximum: np.ndarray  # the largest over all images


@dataclass(frozen=True)
class ChannelStats:
    """Each image's minimum and maximum of every channel (axis 1) of one tensor, (images, C) float32."""

    minimum: np.ndarray
    maximum: np.ndarray

    def ranges(self) -> ChannelRanges:
        magnitude = np.maximum(-self.minimum, self.maximum)
        return ChannelRanges(magnitude.sum(axis=0, dtype=np.float64) / len(magnitude),
                             magnitude.max(axis=0).astype(np.float64))

    def tensor_stats(self, divisor: np.ndarray | None = None) -> TensorStats:
        """``profile``'s statistics (without a histogram) of the tensor, or of the tensor with its channels divided
        by the positive ``divisor``."""
        low, high = self.minimum, self.maximum
        if divisor is not None:
            scale = divisor.astype(np.float32)
            low, high = low / scale, high / scale
        stats = TensorStats()
        stats.update(low.min(axis=1), high.max(axis=1))
        return stats


def channel_ranges(stats: dict[str, ChannelStats]) -> dict[str, ChannelRanges]:
    return {name: s.ranges() for name, s in stats.items()}


def profile_channels(model: onnx.ModelProto, tensors: Sequence[str], images: np.ndarray, batch_size: int,
                     show_progress: bool = True, desc: str = "profile") -> dict[str, ChannelStats]:
    """Each image's per-channel minimum and maximum of ``tensors`` over ``images``, reduced inside ORT (exactly:
    extrema do not round) and streamed batch by batch."""
    tensors = list(dict.fromkeys(tensors))
    if not tensors:
        return {}
    session = make_session(with_channel_reductions(model, tensors, EXTREMA), optimize=True)
    feed = input_name(model)
    names = [channel_reduction_name(t, op) for t in tensors for op in EXTREMA]
    minima: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    maxima: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    with tqdm(total=len(images), desc=desc, unit="img", disable=not show_progress) as progress:
        for start in range(0, len(images), batch_size):
            batch = np.ascontiguousarray(images[start : start + batch_size])
            values = iter(session.run(names, {feed: batch}))
            for tensor in tensors:
                minima[tensor].append(next(values))
                maxima[tensor].append(next(values))
            progress.update(len(batch))
    return {t: ChannelStats(np.concatenate(minima.pop(t)), np.concatenate(maxima.pop(t))) for t in tensors}
