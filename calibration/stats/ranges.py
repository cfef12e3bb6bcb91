"""Range choice from profiled statistics: minmax, mean_minmax, percentile, MSE and entropy (KL).

Every method returns the [low, high] that ``activation_encoding`` turns into a uint8 encoding.
The histogram methods search candidate ranges obtained by shrinking the observed range.

``mean_minmax`` is the workloads' default: under MobileNetV2's default list it gave the highest agreement
and SQNR of the five methods. Choosing ranges by their effect on the model's output (a greedy search, a
per-tensor search, or one factor on every range) gave no clear gain and was dropped. Figures:
results/experiments/ranges.md.
"""

from __future__ import annotations

import numpy as np

from calibration.stats.profile import Histogram, TensorStats

HISTOGRAM_METHODS = ("percentile", "mse", "entropy")
LEVELS = 256
SHRINK_FACTORS = np.linspace(0.05, 1.0, 96)

# What calibration.md says each range method does.
RANGE_TEXT = {
    "minmax": "minimum and maximum over all calibration images",
    "mean_minmax": "mean over the calibration images of each image's own minimum and maximum",
    "percentile": "percentile of the activation histogram",
    "mse": "range minimising the quantization mean squared error",
    "entropy": "range minimising the KL divergence (TensorRT-style entropy)",
}


def percentile_range(hist: Histogram, percentile: float) -> tuple[float, float]:
    cdf = np.cumsum(hist.counts) / max(hist.counts.sum(), 1)
    edges = hist.edges
    tail = 1.0 - percentile / 100.0
    low_index = int(np.searchsorted(cdf, tail, side="right"))
    high_index = int(np.searchsorted(cdf, 1.0 - tail, side="left"))
    return float(edges[low_index]), float(edges[min(high_index + 1, hist.bins)])


def _candidates(stats: TensorStats) -> list[tuple[float, float]]:
    low, high = min(stats.minimum, 0.0), max(stats.maximum, 0.0)
    return [(low * f, high * f) for f in SHRINK_FACTORS]


def _quantized_centers(centers: np.ndarray, low: float, high: float) -> np.ndarray:
    scale = max((high - low) / (LEVELS - 1), 1e-12)
    zero = np.round(-low / scale)
    q = np.clip(np.round(centers / scale) + zero, 0, LEVELS - 1)
    return (q - zero) * scale


def mse_range(stats: TensorStats) -> tuple[float, float]:
    """The candidate range with the least expected squared error (clipping plus rounding)."""
    hist = stats.histogram
    assert hist is not None
    centers = hist.low + hist.width * (np.arange(hist.bins) + 0.5)
    weights = hist.counts / max(hist.counts.sum(), 1)
    best, best_err = None, np.inf
    for low, high in _candidates(stats):
        err = float(np.sum(weights * (centers - _quantized_centers(centers, low, high)) ** 2))
        err += ((high - low) / (LEVELS - 1)) ** 2 / 12.0  # rounding noise inside each bin's quantum
        if err < best_err:
            best, best_err = (low, high), err
    assert best is not None
    return best


def entropy_range(stats: TensorStats) -> tuple[float, float]:
    """The candidate range minimising KL(P || Q), as TensorRT's entropy calibration does.

    P is the histogram restricted to the range with the clipped mass folded into its edge bins;
    Q is the in-range histogram alone (no folded mass), merged into 256 levels and spread back
    uniformly over each level's occupied bins. Clipping too much piles mass on P's edges that Q
    lacks; clipping too little merges too many bins into each level.
    """
    hist = stats.histogram
    assert hist is not None
    centers = hist.low + hist.width * (np.arange(hist.bins) + 0.5)
    counts = hist.counts.astype(np.float64)
    zero_bin = int(np.clip((0.0 - hist.low) // hist.width, 0, hist.bins - 1))
    best, best_kl = None, np.inf
    for low, high in _candidates(stats):
        if (high - low) / hist.width < LEVELS:
            continue  # fewer bins than levels: Q would equal P
        inside = (centers >= low) & (centers <= high)
        first, last = int(np.argmax(inside)), int(len(inside) - 1 - np.argmax(inside[::-1]))
        p = np.where(inside, counts, 0.0)
        p[first] += counts[:first].sum()
        p[last] += counts[last + 1 :].sum()
        scale = (high - low) / (LEVELS - 1)
        level = np.round((np.clip(centers, low, high) - low) / scale).astype(np.int64)
        level[zero_bin] = LEVELS  # 0 is exactly representable: its spike (ReLU's zeros) is never smeared
        in_range = np.where(inside, counts, 0.0)
        occupied = in_range > 0
        level_mass = np.bincount(level, weights=in_range, minlength=LEVELS + 1)
        level_bins = np.bincount(level, weights=occupied.astype(float), minlength=LEVELS + 1)
        q = np.where(occupied, level_mass[level] / np.maximum(level_bins[level], 1), 0.0)
        p, q = p / max(p.sum(), 1e-30), q / max(q.sum(), 1e-30)
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best_kl:
            best, best_kl = (low, high), kl
    if best is None:  # the observed range is narrower than 256 bins: nothing to clip
        return min(stats.minimum, 0.0), max(stats.maximum, 0.0)
    return best


def choose_range(stats: TensorStats, method: str, percentile: float) -> tuple[float, float]:
    if method == "minmax":
        return stats.minimum, stats.maximum
    if method == "mean_minmax":
        return stats.mean_min, stats.mean_max
    if method == "percentile":
        assert stats.histogram is not None
        return percentile_range(stats.histogram, percentile)
    if method == "mse":
        return mse_range(stats)
    if method == "entropy":
        return entropy_range(stats)
    raise ValueError(f"unknown range method {method}")
