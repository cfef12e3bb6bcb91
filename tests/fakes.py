"""Fake backends for the harness tests. They live in an importable module so a spawned LoadGen child can
unpickle them; the tests below check the fakes themselves."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

NUM_CLASSES = 10


def write_tensors(path: Path, labels: np.ndarray) -> Path:
    """Tiny "images" whose first value encodes the class an oracle model predicts."""
    tensors = np.zeros((len(labels), 3, 4, 4), np.float32)
    tensors[:, 0, 0, 0] = labels
    np.save(path, tensors)
    return path


class OracleBackend:
    """Predicts the class encoded in each sample, after ``delay_ms``; scores have ``offset`` leading classes."""

    def __init__(self, delay_ms: float = 0.0, offset: int = 0) -> None:
        self.delay_ms = delay_ms
        self.offset = offset

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if self.delay_ms:
            time.sleep(self.delay_ms / 1000.0)
        scores = np.zeros((len(batch), NUM_CLASSES + self.offset), np.float32)
        scores[np.arange(len(batch)), batch[:, 0, 0, 0].astype(int) + self.offset] = 1.0
        return scores


class FailingBackend(OracleBackend):
    """Answers ``good_calls`` batches, then raises as a broken model would."""

    def __init__(self, good_calls: int = 0) -> None:
        super().__init__()
        self.calls = 0
        self.good_calls = good_calls

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls > self.good_calls:
            raise RuntimeError("simulated kernel failure")
        return super().predict(batch)
