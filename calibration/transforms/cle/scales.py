"""Per-channel range math for CLE: plain numpy, no graph."""

from __future__ import annotations

import numpy as np

MAX_LOG_SCALE = 4.0  # activation-aware scales are clamped to e^±4


# Activation-aware CLE floors each term's per-channel ranges at this share of their median before
# taking logs: near-dead channels carry little signal, and unfloored they pull their scales to the
# clamp and their partners' ranges up with them. 0.1 measured best of the floors tried
# (results/experiments/cle.md).
RANGE_FLOOR_OF_MEDIAN = 0.1


def output_channel_ranges(weight: np.ndarray) -> np.ndarray:
    """max|W| per output channel (axis 0)."""
    return np.abs(weight).reshape(weight.shape[0], -1).max(axis=1)


def input_channel_ranges(weight: np.ndarray, depthwise: bool) -> np.ndarray:
    """max|W| per input channel: axis 1 of an ordinary Conv, axis 0 of a depthwise one."""
    if depthwise:
        return output_channel_ranges(weight)
    return np.abs(weight).max(axis=tuple(i for i in range(weight.ndim) if i != 1))


def _valid(*ranges: np.ndarray) -> np.ndarray:
    ok = np.ones_like(ranges[0], dtype=bool)
    for r in ranges:
        ok &= np.isfinite(r) & (r > 0)
    return ok


def pair_scales(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """s = sqrt(r1/r2), so both ranges become sqrt(r1·r2); 1 where a range is zero or not finite."""
    ok = _valid(r1, r2)
    s = np.ones(r1.shape, np.float64)
    s[ok] = np.sqrt(r1[ok].astype(np.float64) / r2[ok])
    return s


def triplet_scales(r0: np.ndarray, r1: np.ndarray, r2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(s1, s2) making r0/s1 = r1·s1/s2 = r2·s2 = (r0·r1·r2)^(1/3); 1 where a range is degenerate."""
    ok = _valid(r0, r1, r2)
    s1, s2 = np.ones(r0.shape, np.float64), np.ones(r0.shape, np.float64)
    target = np.cbrt(r0[ok].astype(np.float64) * r1[ok] * r2[ok])
    s1[ok] = r0[ok] / target
    s2[ok] = target / r2[ok]
    return s1, s2


def _log_ranges(r: np.ndarray) -> np.ndarray:
    r = np.asarray(r, np.float64)
    positive = r[np.isfinite(r) & (r > 0)]
    if positive.size == 0:
        return np.zeros_like(r)
    return np.log(np.clip(np.where(np.isfinite(r), r, positive.max()), RANGE_FLOOR_OF_MEDIAN * np.median(positive),
                          None))


def activation_aware_scales(weight_terms: list[tuple[np.ndarray, tuple[int, ...]]],
                            max_log_scale: float = MAX_LOG_SCALE) -> list[np.ndarray]:
    """Least-squares log-scales flattening every term's per-channel ranges together.

    Each term is (per-channel ranges r, coefficients a) meaning that after scaling its range is
    r·Π_j s_j^a_j. The objective Σ_terms Σ_i (log r_i + Σ_j a_j x_ji − c_term)² with one free
    level c per term only sees each term's channel-centred logs, so it separates per channel
    into one small system with the same matrix A (terms × scales) for every channel.
    """
    a = np.array([coefs for _, coefs in weight_terms], np.float64)
    logs = np.stack([_log_ranges(r) for r, _ in weight_terms])
    centred = logs - logs.mean(axis=1, keepdims=True)
    x = -np.linalg.solve(a.T @ a, a.T @ centred)
    return [np.exp(np.clip(row, -max_log_scale, max_log_scale)) for row in x]


def fusable_scales(s: np.ndarray, bound: np.ndarray, maxima: np.ndarray) -> np.ndarray:
    """``s`` lowered where needed so that every bound/s stays at or above max(maxima/s).

    ``maxima`` are the channels' largest values (at most their bounds). Lowering s_i to
    bound_i/top keeps the top: that channel's maximum/s_i becomes top·maxima_i/bound_i ≤ top.
    Channels with a zero bound are constant zero and keep their scale.
    """
    top = float(np.max(maxima / s, initial=0.0))
    if top <= 0.0:
        return s
    limited = s.copy()
    live = bound > 0
    limited[live] = np.minimum(s[live], bound[live] / top)
    return limited


def range_spread(r: np.ndarray) -> float:
    """max/min of the positive per-channel ranges."""
    r = r[np.isfinite(r) & (r > 0)]
    return float(r.max() / r.min()) if r.size else 1.0
