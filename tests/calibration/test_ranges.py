"""Histograms and the five range methods."""

from __future__ import annotations

import numpy as np

from calibration.stats.profile import Histogram, TensorStats
from calibration.stats.ranges import choose_range


def test_histogram_growth_keeps_every_count() -> None:
    rng = np.random.default_rng(0)
    hist = Histogram(256)
    chunks = [rng.normal(k, 1 + k, 10_000).astype(np.float32) for k in range(5)] + [
        rng.normal(-20, 1, 1000).astype(np.float32)
    ]
    for chunk in chunks:
        hist.add(chunk, float(chunk.min()), float(chunk.max()))
    values = np.concatenate(chunks)
    assert hist.counts.sum() == values.size
    assert hist.low <= values.min() and hist.high > values.max()
    reference = np.histogram(values, hist.bins, (hist.low, hist.high))[0]
    assert np.abs(reference - hist.counts).max() <= 1  # only float rounding at bin edges may differ


def _stats(batches: list[np.ndarray], bins: int = 2048) -> TensorStats:
    stats = TensorStats(histogram=Histogram(bins))
    for batch in batches:
        stats.update_batch(batch)
    return stats


def test_minmax_and_mean_minmax() -> None:
    a = np.array([[0.0, 1.0], [0.0, 3.0]], np.float32)
    b = np.array([[-1.0, 2.0], [0.0, 10.0]], np.float32)
    stats = _stats([a, b])
    assert choose_range(stats, "minmax", 99.9) == (-1.0, 10.0)
    assert choose_range(stats, "mean_minmax", 99.9) == (-0.25, 4.0)  # mean of per-image min and max


def test_percentile_matches_numpy_within_a_bin() -> None:
    x = np.random.default_rng(4).exponential(1.0, (50, 4000)).astype(np.float32)
    stats = _stats([x[i : i + 10] for i in range(0, 50, 10)])
    low, high = choose_range(stats, "percentile", 99.9)
    width = stats.histogram.width
    assert abs(high - np.percentile(x, 99.9)) <= 2 * width
    assert abs(low - np.percentile(x, 0.1)) <= 2 * width


def test_mse_and_entropy_clip_rare_outliers_but_not_uniform_data() -> None:
    rng = np.random.default_rng(5)
    heavy = rng.normal(0, 1, (20, 5000)).astype(np.float32)
    heavy[3, 7], heavy[11, 42] = 60.0, -60.0  # two outliers in 10^5 values
    stats = _stats([heavy])
    low, high = choose_range(stats, "mse", 99.9)
    assert high < 0.9 * stats.maximum and low > 0.9 * stats.minimum
    low, high = choose_range(stats, "entropy", 99.9)  # KL ignores how far the outliers are: clips harder
    assert high < 0.5 * stats.maximum and low > 0.5 * stats.minimum
    uniform = rng.uniform(0, 1, (20, 5000)).astype(np.float32)
    stats = _stats([uniform])
    for method in ("mse", "entropy"):
        _, high = choose_range(stats, method, 99.9)
        assert high > 0.9 * stats.maximum, method


def test_mse_beats_minmax_on_its_own_objective() -> None:
    x = np.random.default_rng(6).laplace(0, 1, (10, 20000)).astype(np.float32)
    stats = _stats([x])

    def mse(bounds: tuple[float, float]) -> float:
        from calibration.quant.encodings import activation_encoding

        enc = activation_encoding(*bounds)
        return float(np.mean((enc.fake_quantize(x) - x) ** 2))

    assert mse(choose_range(stats, "mse", 99.9)) < mse(choose_range(stats, "minmax", 99.9))


def test_entropy_keeps_relu6_outputs_wide() -> None:
    """ReLU6 outputs: half exact zeros and a saturation spike at 6. Smearing the zero spike over its
    level once drove KL to a tiny range (Lite0 collapsed to 25 % top-1); zero is exact, so it stays."""
    rng = np.random.default_rng(7)
    x = np.where(rng.random((20, 5000)) < 0.6, 0.0, np.minimum(rng.exponential(1.0, (20, 5000)), 6.0))
    low, high = choose_range(_stats([x.astype(np.float32)]), "entropy", 99.9)
    assert low == 0.0 and high > 4.0  # the zero-smearing version chose 2.2
