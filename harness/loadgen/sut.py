"""LoadGen's system under test: ``issue_queries`` only enqueues; worker threads batch and run inference.

Each scenario gets a batching policy: Offline splits its one large query into batches, Server coalesces
single-sample queries for at most a time bound, SingleStream and MultiStream run each query at once.
A failed inference goes to ``on_error`` and is never answered: LoadGen never sees an empty response.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from harness.loadgen.backend import Backend, BackendError
from harness.loadgen.qsl import SampleLibrary

log = logging.getLogger(__name__)

# (response ids, predicted labels as float32, as MLPerf's reference ImageNet harness logs them)
Responder = Callable[[Sequence[int], np.ndarray], None]
ErrorHandler = Callable[[BaseException], None]


@dataclass(frozen=True)
class Sample:
    id: int  # LoadGen's response id
    index: int  # QSL sample index


@dataclass(frozen=True)
class BatchPolicy:
    """``split``: largest batch a query is cut into; ``coalesce_ms``: if set, wait up to this long after a
    batch's first sample for more single-sample queries, up to ``max_batch`` (Server's dynamic batching)."""

    split: int
    max_batch: int
    coalesce_ms: float | None = None


_STOP: list[Sample] = []


class InferenceSUT:
    def __init__(self, backend: Backend, qsl: SampleLibrary, policy: BatchPolicy, label_offset: int,
                 respond: Responder, on_error: ErrorHandler, workers: int = 1) -> None:
        self.backend = backend
        self.qsl = qsl
        self.policy = policy
        self.label_offset = label_offset
        self.respond = respond
        self.on_error = on_error
        self._jobs: queue.Queue[list[Sample]] = queue.Queue()
        self._threads = [threading.Thread(target=self._work, name=f"sut-worker-{i}", daemon=True)
                         for i in range(workers)]
        self.batches_run = 0

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        for _ in self._threads:
            self._jobs.put(_STOP)
        for thread in self._threads:
            thread.join()

    def issue_queries(self, query_samples: Sequence) -> None:
        samples = [Sample(q.id, q.index) for q in query_samples]
        for start in range(0, len(samples), self.policy.split):
            self._jobs.put(samples[start : start + self.policy.split])

    def flush_queries(self) -> None:
        """Nothing is held back beyond ``coalesce_ms``, so there is nothing to flush."""

    def _coalesce(self, job: list[Sample], timeout_ms: float) -> list[Sample]:
        deadline = time.monotonic() + timeout_ms / 1000.0
        while len(job) < self.policy.max_batch:
            remaining = deadline - time.monotonic()
            try:
                more = self._jobs.get(timeout=remaining) if remaining > 0 else self._jobs.get_nowait()
            except queue.Empty:
                break
            if more is _STOP:
                self._jobs.put(_STOP)
                break
            job = job + more
        return job

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            if self.policy.coalesce_ms is not None:
                job = self._coalesce(job, self.policy.coalesce_ms)
            try:
                labels = self.infer([s.index for s in job])
                self.respond([s.id for s in job], labels)
            except BaseException as err:  # handed on, never swallowed: the run fails
                self.on_error(err)
                return
            self.batches_run += 1

    def infer(self, indices: Sequence[int]) -> np.ndarray:
        scores = self.backend.predict(self.qsl.batch(indices))
        if scores.ndim != 2 or scores.shape[0] != len(indices):
            raise BackendError(f"the model returned scores of shape {scores.shape} for a batch of {len(indices)}")
        return (np.argmax(scores, axis=1) - self.label_offset).astype(np.float32)
