"""SUT and QSL with fake backends, without LoadGen: batching per scenario, and failures that are never answered."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from harness.loadgen.qsl import SampleLibrary
from harness.loadgen.scenarios import batch_policy
from harness.loadgen.sut import InferenceSUT
from tests.fakes import FailingBackend, OracleBackend
from workload.config import HarnessConfig
from workload.errors import HarnessError


def library(n: int = 40, performance: int = 1024) -> SampleLibrary:
    tensors = np.zeros((n, 3, 4, 4), np.float32)
    tensors[:, 0, 0, 0] = np.arange(n) % 10
    return SampleLibrary(tensors, performance)


class Recorder:
    def __init__(self) -> None:
        self.responses: dict[int, float] = {}
        self.batch_sizes: list[int] = []
        self.errors: list[BaseException] = []
        self.done = threading.Event()

    def respond(self, ids, labels) -> None:
        self.batch_sizes.append(len(ids))
        self.responses.update(zip(ids, labels.tolist()))

    def on_error(self, err: BaseException) -> None:
        self.errors.append(err)
        self.done.set()


def queries(indices) -> list[SimpleNamespace]:
    return [SimpleNamespace(id=1000 + i, index=i) for i in indices]


def wait_for(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_qsl_caps_performance_count_and_loads_on_request() -> None:
    qsl = library(n=40, performance=1024)
    assert (qsl.total_count, qsl.performance_count) == (40, 40)
    qsl.load_samples([3, 5])
    assert qsl.batch([5, 3])[:, 0, 0, 0].tolist() == [5.0, 3.0]
    qsl.unload_samples([3])
    assert qsl.resident_count == 1
    with pytest.raises(HarnessError, match="sample 3 was queried but LoadGen never loaded it"):
        qsl.batch([3])


def test_offline_splits_one_large_query_into_configured_batches() -> None:
    qsl, rec = library(), Recorder()
    qsl.load_samples(range(40))
    sut = InferenceSUT(OracleBackend(offset=1), qsl, batch_policy("Offline", HarnessConfig(offline_batch_size=16)),
                       1, rec.respond, rec.on_error)
    sut.start()
    sut.issue_queries(queries(range(40)))
    wait_for(lambda: len(rec.responses) == 40)
    sut.stop()
    assert sorted(rec.batch_sizes) == [8, 16, 16]
    assert all(rec.responses[1000 + i] == i % 10 for i in range(40))  # label offset removed


def test_issue_queries_returns_before_inference_finishes() -> None:
    qsl, rec = library(), Recorder()
    qsl.load_samples(range(8))
    sut = InferenceSUT(OracleBackend(delay_ms=200), qsl, batch_policy("SingleStream", HarnessConfig()), 0,
                       rec.respond, rec.on_error)
    sut.start()
    start = time.perf_counter()
    sut.issue_queries(queries([0]))
    assert time.perf_counter() - start < 0.05 and not rec.responses
    wait_for(lambda: len(rec.responses) == 1)
    sut.stop()


def test_server_coalesces_queries_that_arrive_within_the_timeout() -> None:
    qsl, rec = library(), Recorder()
    qsl.load_samples(range(12))
    cfg = HarnessConfig(server_batch_size=4, server_batch_timeout_ms=50.0)
    sut = InferenceSUT(OracleBackend(), qsl, batch_policy("Server", cfg), 0, rec.respond, rec.on_error)
    sut.start()
    for i in range(10):
        sut.issue_queries(queries([i]))
    wait_for(lambda: len(rec.responses) == 10)
    sut.stop()
    assert rec.batch_sizes == [4, 4, 2]


def test_failed_inference_is_reported_and_never_answered() -> None:
    qsl, rec = library(), Recorder()
    qsl.load_samples(range(40))
    sut = InferenceSUT(FailingBackend(good_calls=1), qsl, batch_policy("Offline", HarnessConfig(offline_batch_size=8)),
                       0, rec.respond, rec.on_error)
    sut.start()
    sut.issue_queries(queries(range(40)))
    assert rec.done.wait(5.0)
    sut.stop()
    assert [str(e) for e in rec.errors] == ["simulated kernel failure"]
    assert len(rec.responses) == 8  # only the batch that really ran was answered


def test_wrong_output_shape_is_an_error_not_a_response() -> None:
    class Flat(OracleBackend):
        def predict(self, batch: np.ndarray) -> np.ndarray:
            return np.zeros(len(batch), np.float32)

    qsl, rec = library(), Recorder()
    qsl.load_samples([0])
    sut = InferenceSUT(Flat(), qsl, batch_policy("SingleStream", HarnessConfig()), 0, rec.respond, rec.on_error)
    sut.start()
    sut.issue_queries(queries([0]))
    assert rec.done.wait(5.0)
    sut.stop()
    assert "scores of shape (1,)" in str(rec.errors[0]) and not rec.responses


def test_oracle_backend_predicts_the_encoded_class() -> None:
    batch = np.zeros((3, 3, 4, 4), np.float32)
    batch[:, 0, 0, 0] = [2, 7, 0]
    assert OracleBackend(offset=1).predict(batch).argmax(axis=1).tolist() == [3, 8, 1]
