"""CLE on the real MobileNetV2: the sets it finds, and that exact CLE keeps the float function."""

from __future__ import annotations

import numpy as np

from calibration.graph.session import make_session
from calibration.transforms.cle.driver import equalize
from calibration.transforms.cle.sets import find_cle_sets
from calibration.transforms.fold import fold_batch_norms


def test_mobilenetv2_sets_and_exact_cle(mobilenetv2_state) -> None:
    from calibration.source.models.mobilenetv2 import build_mobilenetv2

    model = build_mobilenetv2(mobilenetv2_state)
    folded_model, folded, _ = fold_batch_norms(model)
    sets, skipped = find_cle_sets(folded_model)
    # 17 inverted-residual blocks → 17 conv→depthwise→conv triplets (the stem feeds block 1's
    # depthwise); the project→expand pairs between blocks without a residual Add are pairs, and
    # every project conv whose output also feeds a residual Add is reported as a fork.
    assert sum(len(s.layers) == 3 for s in sets) == 17
    assert sum(len(s.layers) == 2 for s in sets) == 2
    assert skipped and all("fork" in s.reason for s in skipped)
    result = equalize(folded_model, {f.layer: f for f in folded}, iterate=True)
    x = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    reference = make_session(model).run(None, {"input": x})[0]
    equalized = make_session(result.model).run(None, {"input": x})[0]
    assert np.abs(equalized - reference).max() / np.abs(reference).max() < 1e-5
