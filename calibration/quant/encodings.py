"""Quantization encodings: asymmetric uint8 activations with 0 exactly representable, symmetric
int8 weights (per-channel on axis 0 or per-tensor), int32 bias with scale s_in·s_w, plus the
numpy quantize/dequantize reference and export to AIMET's encodings layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

QuantDtype = Literal["uint8", "int8", "int32"]
QUANT_LIMITS: dict[str, tuple[int, int]] = {
    "uint8": (0, 255),
    "int8": (-127, 127),  # symmetric, restricted range: -128 is never used
    "int32": (-(2**31), 2**31 - 1),
}
NUMPY_DTYPES = {"uint8": np.uint8, "int8": np.int8, "int32": np.int32}
BITS = {"uint8": 8, "int8": 8, "int32": 32}  # a wider activation dtype (uint16 on the HTP) is one entry in each table
MIN_SCALE = np.float32(1e-8)


@dataclass(frozen=True)
class Encoding:
    """real = (q − zero_point)·scale, with q clipped to the dtype's limits."""

    scale: np.ndarray  # float32, shape () or (C,)
    zero_point: np.ndarray  # int64, same shape
    dtype: QuantDtype
    axis: int | None = None  # channel axis when per-channel

    @property
    def qmin(self) -> int:
        return QUANT_LIMITS[self.dtype][0]

    @property
    def qmax(self) -> int:
        return QUANT_LIMITS[self.dtype][1]

    @property
    def symmetric(self) -> bool:
        return self.dtype != "uint8"

    @property
    def range_min(self) -> np.ndarray:
        return (self.qmin - self.zero_point) * self.scale

    @property
    def range_max(self) -> np.ndarray:
        return (self.qmax - self.zero_point) * self.scale

    def _broadcast(self, value: np.ndarray, ndim: int) -> np.ndarray:
        if self.axis is None or value.ndim == 0:
            return value
        shape = [1] * ndim
        shape[self.axis] = -1
        return value.reshape(shape)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        scale = self._broadcast(self.scale, x.ndim)
        zero = self._broadcast(self.zero_point, x.ndim)
        q = np.round(x.astype(np.float64) / scale) + zero  # round half to even, as ONNX QuantizeLinear
        return np.clip(q, self.qmin, self.qmax).astype(NUMPY_DTYPES[self.dtype])

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        scale = self._broadcast(self.scale, q.ndim)
        zero = self._broadcast(self.zero_point, q.ndim)
        return ((q.astype(np.int64) - zero) * scale).astype(np.float32)

    def fake_quantize(self, x: np.ndarray) -> np.ndarray:
        return self.dequantize(self.quantize(x))


def activation_encoding(low: float, high: float) -> Encoding:
    """Asymmetric uint8 over [low, high] widened to include 0, with 0 exactly representable."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    scale = np.float32(max((high - low) / 255.0, float(MIN_SCALE)))
    zero_point = int(np.clip(np.round(-low / float(scale)), 0, 255))
    return Encoding(np.asarray(scale, np.float32), np.asarray(zero_point, np.int64), "uint8")


def weight_encoding(weight: np.ndarray, per_channel: bool) -> Encoding:
    """Symmetric int8 on [-127, 127]: scale = max|W| / 127, per output channel (axis 0) or per tensor."""
    if per_channel:
        absmax = np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1)
    else:
        absmax = np.asarray(np.abs(weight).max())
    scale = np.maximum(absmax / 127.0, MIN_SCALE).astype(np.float32)
    return Encoding(scale, np.zeros(scale.shape, np.int64), "int8", 0 if per_channel else None)


def bias_encoding(input_scale: np.ndarray, weight: Encoding) -> Encoding:
    """int32 bias with scale s_in·s_w (per output channel when the weight is)."""
    scale = (np.float32(input_scale) * weight.scale).astype(np.float32)
    return Encoding(scale, np.zeros(scale.shape, np.int64), "int32", weight.axis)


def quantize_weight(weight: np.ndarray, per_channel: bool) -> tuple[Encoding, np.ndarray]:
    """The int8 weight exactly as the QDQ model stores it, and its encoding."""
    encoding = weight_encoding(weight, per_channel)
    return encoding, encoding.quantize(weight)


