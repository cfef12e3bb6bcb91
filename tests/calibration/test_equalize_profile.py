"""Profiling statistics that CLE relies on: the graph input's per-image ranges."""

from __future__ import annotations

import numpy as np

from calibration.source.models.builder import GraphBuilder
from calibration.stats.profile import profile_activations


def test_graph_input_statistics_cover_every_batch():
    rng = np.random.default_rng(0)
    b = GraphBuilder("input", 3, 8, 8)
    y = b.relu(b.conv("input", "c1", rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)), "r1")
    model = b.build("tiny", [(b.global_avg_pool_flat(y, "head"), 4)])
    scale = np.linspace(1, 5, 40, dtype=np.float32)[:, None, None, None]
    images = rng.normal(size=(40, 3, 8, 8)).astype(np.float32) * scale
    stats = profile_activations(model, ["input", y], images, batch_size=8, histogram_bins=None,
                                show_progress=False)["input"]
    flat = images.reshape(len(images), -1)
    assert stats.minimum == flat.min()
    assert stats.maximum == flat.max()
    np.testing.assert_allclose(stats.mean_min, flat.min(axis=1).mean(), rtol=1e-6)
    np.testing.assert_allclose(stats.mean_max, flat.max(axis=1).mean(), rtol=1e-6)
