"""One LoadGen test, run in a child process.

The child builds the backend, the QSL and the SUT, measures the model's speed, writes ``user.conf`` and runs
LoadGen with its logs in an isolated directory. A failed inference ends the child at once with the error sent
to the parent, which raises it: the run fails loudly instead of hanging or answering LoadGen with nothing.
A fresh process per test also gives LoadGen a fresh global state.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import statistics
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import mlperf_loadgen as lg
import numpy as np

from harness.loadgen.backend import Backend
from harness.loadgen.qsl import SampleLibrary
from harness.loadgen.scenarios import (
    MULTISTREAM_SAMPLES_PER_QUERY,
    DurationProfile,
    Measurement,
    batch_policy,
    loadgen_settings,
    user_conf,
)
from harness.loadgen.sut import InferenceSUT
from workload.config import HarnessConfig
from workload.errors import HarnessError

log = logging.getLogger(__name__)


class InferenceFailed(HarnessError):
    """The SUT's inference raised during a LoadGen run."""


@dataclass(frozen=True)
class RunRequest:
    scenario: str
    mode: str
    profile: DurationProfile
    harness: HarnessConfig
    tensors_path: Path  # the preprocessed tensors (.npy), memory-mapped by the child
    label_offset: int
    backend_factory: Callable[[], Backend]  # must pickle: the child calls it
    log_dir: Path  # isolated, empty: LoadGen's logs and user.conf go here
    header: str  # first line of user.conf
    sample_count: int | None = None  # the first N samples only; None: all


@dataclass(frozen=True)
class RunOutcome:
    measurement: Measurement
    batches_run: int
    performance_count: int


def _latencies_ms(backend: Backend, batch: np.ndarray, min_runs: int, min_seconds: float) -> list[float]:
    """Latencies of repeated runs (after one warm-up), for at least ``min_runs`` runs and ``min_seconds``."""
    backend.predict(batch)
    times: list[float] = []
    begin = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - begin < min_seconds:
        start = time.perf_counter()
        backend.predict(batch)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def measure(scenario: str, backend: Backend, qsl: SampleLibrary, cfg: HarnessConfig) -> Measurement:
    """The speed LoadGen needs to plan a run of the minimum duration, measured on real samples.

    Medians suit Offline and the stream scenarios (a fast estimate only lengthens the run); Server uses the
    mean over a full second, so that its target QPS reflects the sustained speed of a busy machine.
    """
    size = {"Offline": cfg.offline_batch_size, "MultiStream": MULTISTREAM_SAMPLES_PER_QUERY}.get(scenario, 1)
    indices = [i % qsl.total_count for i in range(size)]
    qsl.load_samples(indices)
    try:
        batch = qsl.batch(indices)
        if scenario == "Offline":
            return Measurement(offline_qps=size * 1000.0 / statistics.median(_latencies_ms(backend, batch, 3, 0)))
        if scenario == "MultiStream":
            return Measurement(multistream_latency_ms=statistics.median(_latencies_ms(backend, batch, 10, 0)))
        if scenario == "Server":
            return Measurement(single_latency_ms=statistics.mean(_latencies_ms(backend, batch, 30, 1.0)))
        return Measurement(single_latency_ms=statistics.median(_latencies_ms(backend, batch, 30, 0)))
    finally:
        qsl.unload_samples(indices)


def respond_to_loadgen(ids: Sequence[int], labels: np.ndarray) -> None:
    size = labels.itemsize
    lg.QuerySamplesComplete([lg.QuerySampleResponse(i, labels.ctypes.data + k * size, size)
                             for k, i in enumerate(ids)])


def execute(request: RunRequest, on_error: Callable[[BaseException], None]) -> RunOutcome:
    backend = request.backend_factory()
    tensors = np.load(request.tensors_path, mmap_mode="r")
    qsl = SampleLibrary(tensors[:request.sample_count], request.harness.performance_sample_count)
    # Accuracy runs need it too: Server issues every sample at the target QPS (LoadGen's default is 1/s).
    measured = measure(request.scenario, backend, qsl, request.harness)
    conf_path = request.log_dir / "user.conf"
    conf_path.write_text(user_conf(request.scenario, request.harness, request.profile, qsl.performance_count,
                                   measured, request.header))
    settings = loadgen_settings(request.scenario, request.mode, request.harness, conf_path)
    sut = InferenceSUT(backend, qsl, batch_policy(request.scenario, request.harness), request.label_offset,
                       respond_to_loadgen, on_error, request.harness.workers)
    output = lg.LogOutputSettings()
    output.outdir = str(request.log_dir)
    output.copy_summary_to_stdout = False
    log_settings = lg.LogSettings()
    log_settings.log_output = output
    log_settings.enable_trace = False  # the trace grows by GBs per minute and nothing reads it
    sut.start()
    lg_sut = lg.ConstructSUT(sut.issue_queries, sut.flush_queries)
    lg_qsl = lg.ConstructQSL(qsl.total_count, qsl.performance_count, qsl.load_samples, qsl.unload_samples)
    try:
        # The audit file is looked up only inside the fresh log directory, where none exists: a stray
        # audit.config in the caller's working directory cannot change the run.
        lg.StartTestWithLogSettings(lg_sut, lg_qsl, settings, log_settings, str(request.log_dir / "audit.config"))
    finally:
        sut.stop()
        lg.DestroyQSL(lg_qsl)
        lg.DestroySUT(lg_sut)
    return RunOutcome(measured, sut.batches_run, qsl.performance_count)


def _describe(err: BaseException) -> str:
    if isinstance(err, HarnessError):
        return str(err)
    frame = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    where = f" (at {Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return f"{type(err).__name__}: {err}{where}"


def _child_main(request: RunRequest, conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends the child even while LoadGen holds the thread
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    def fail(err: BaseException) -> None:
        conn.send(("inference", _describe(err)))
        conn.close()
        os._exit(1)  # LoadGen cannot be stopped from a worker thread; the parent reports the error

    try:
        conn.send(("ok", execute(request, fail)))
    except BaseException as err:
        conn.send(("setup", _describe(err)))
    conn.close()


def run_isolated(request: RunRequest) -> RunOutcome:
    """Run ``request`` in a spawned child process; raise ``InferenceFailed`` or ``HarnessError`` on failure."""
    context = mp.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child_main, args=(request, sender), name=f"loadgen-{request.scenario}")
    child.start()
    sender.close()
    try:
        try:
            kind, payload = receiver.recv()
        except EOFError:
            kind, payload = "crash", None
        child.join()
    finally:
        if child.is_alive():
            child.terminate()
            child.join()
        receiver.close()
    if kind == "ok":
        return payload
    if child.exitcode == -signal.SIGINT:  # Ctrl-C reached the child first
        raise KeyboardInterrupt
    if kind == "inference":
        raise InferenceFailed(f"{request.scenario} {request.mode} run failed: inference raised {payload}")
    if kind == "setup":
        raise HarnessError(f"{request.scenario} {request.mode} run failed: {payload}")
    raise HarnessError(f"{request.scenario} {request.mode} run failed: the LoadGen process died "
                       f"(exit status {child.exitcode})")
