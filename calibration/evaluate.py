"""Fidelity figures of a model's logits against labels and against the float model's logits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Accuracy:
    top1: float
    top5: float


def accuracy(logits: np.ndarray, labels: np.ndarray, label_offset: int = 0) -> Accuracy:
    """Top-1 and top-5 (fractions); ``label_offset`` is 1 for models with a background class at 0."""
    top5 = np.argsort(-logits, axis=1)[:, :5] - label_offset
    return Accuracy(float(np.mean(top5[:, 0] == labels)), float(np.mean((top5 == labels[:, None]).any(axis=1))))


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Share of images whose top-1 class is the same in both models."""
    return float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)))


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of ``candidate`` against ``reference``, in dB."""
    noise = float(np.sum((reference.astype(np.float64) - candidate) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    return float("inf") if noise == 0 else 10.0 * np.log10(signal / noise)


def relative_change(reference: np.ndarray, candidate: np.ndarray) -> float:
    """‖candidate − reference‖ / ‖reference‖: the float-model drift a transform causes."""
    return float(np.linalg.norm(candidate - reference) / max(np.linalg.norm(reference), 1e-30))
