"""Encodings: 0 exactly representable, round trips within half a step, AIMET layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calibration.quant.aimet import export_aimet_encodings
from calibration.quant.encodings import activation_encoding, bias_encoding, quantize_weight, weight_encoding


@pytest.mark.parametrize("low,high", [(0.0, 6.0), (-3.7, 11.2), (-0.01, 250.0), (-8.0, -1.0), (0.5, 2.0), (0, 0)])
def test_activation_zero_is_exact_and_round_trip_is_half_a_step(low: float, high: float) -> None:
    enc = activation_encoding(low, high)
    assert enc.dtype == "uint8" and 0 <= int(enc.zero_point) <= 255
    assert enc.fake_quantize(np.zeros(3, np.float32)).tolist() == [0.0, 0.0, 0.0]
    assert float(enc.range_min) <= min(low, 0.0) + float(enc.scale) / 2
    assert float(enc.range_max) >= max(high, 0.0) - float(enc.scale) / 2
    x = np.random.default_rng(1).uniform(min(low, 0), max(high, 0), 1000).astype(np.float32)
    assert np.abs(enc.fake_quantize(x) - x).max() <= float(enc.scale) / 2 * (1 + 1e-5)


def test_post_relu_range_has_zero_point_zero() -> None:
    assert int(activation_encoding(0.0, 6.0).zero_point) == 0


def test_weights_are_symmetric_per_channel_and_per_tensor() -> None:
    w = np.random.default_rng(2).normal(size=(8, 4, 3, 3)).astype(np.float32)
    w[3] *= 10.0
    per_channel, q = quantize_weight(w, per_channel=True)
    assert per_channel.scale.shape == (8,) and per_channel.axis == 0
    assert q.dtype == np.int8 and q.min() >= -127 and q.max() <= 127
    assert np.all(np.abs(q.reshape(8, -1)).max(axis=1) == 127)  # each channel uses its full range
    assert np.all(per_channel.zero_point == 0)
    step = per_channel.scale.reshape(-1, 1, 1, 1)
    assert np.all(np.abs(per_channel.dequantize(q) - w) <= step / 2 * (1 + 1e-5))
    per_tensor = weight_encoding(w, per_channel=False)
    assert per_tensor.scale.shape == () and np.isclose(per_tensor.scale, np.abs(w).max() / 127)


def test_bias_scale_is_input_times_weight_scale() -> None:
    w_enc = weight_encoding(np.random.default_rng(3).normal(size=(5, 2)).astype(np.float32), True)
    b_enc = bias_encoding(np.float32(0.02), w_enc)
    assert b_enc.dtype == "int32"
    assert np.allclose(b_enc.scale, 0.02 * w_enc.scale)
    bias = np.array([0.1, -0.2, 0.0, 3.0, -1e-4], np.float32)
    assert np.all(np.abs(b_enc.fake_quantize(bias) - bias) <= b_enc.scale / 2 * (1 + 1e-5))


def test_aimet_layout(tmp_path: Path) -> None:
    act = activation_encoding(-1.0, 5.0)
    w_enc, _ = quantize_weight(np.ones((3, 2), np.float32), per_channel=True)
    path = tmp_path / "encodings.json"
    export_aimet_encodings({"x": act}, {"w": w_enc}, path)
    doc = json.loads(path.read_text())
    entry = doc["activation_encodings"][0]
    assert set(entry) == {"name", "bw", "dtype", "enc_type", "is_sym", "offset", "scale"}
    assert entry["name"] == "x" and entry["bw"] == 8 and entry["is_sym"] is False
    # AIMET's unsigned view: real = (q + offset)·scale, so offset = -zero_point and 0 maps to q = zero_point.
    assert entry["offset"] == [-int(act.zero_point)] and np.isclose(entry["scale"][0], float(act.scale))
    param = doc["param_encodings"][0]
    assert param["enc_type"] == "PER_CHANNEL" and len(param["scale"]) == 3 and param["is_sym"] is True
