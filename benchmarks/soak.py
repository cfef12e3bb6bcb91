"""Soak: the Server scenario at its target QPS for several minutes; do latency and memory stay flat?

One LoadGen Server performance run of ``--minutes`` (the harness's own target QPS: ``server_load_factor`` times the
measured batch-1 speed), on the workload's int8 model. Inside the LoadGen child, a wrapper around the ONNX Runtime
backend records each inference's time, latency and the process's resident memory. The run is cut into windows of
``--window-s``; the table gives each window's p50/p99 inference latency and the RSS at its end, and the verdict
compares the last window with the first (latency ratio and RSS growth), beside LoadGen's own p99 and validity.

Not run in CI (minutes long). Run from the repository root:
``flock /tmp/heavy.lock .venv/bin/python -m benchmarks.soak --minutes 3``. Writes results/benchmarks/soak.json and
results/benchmarks/soak.png.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from harness.loadgen.backend import OnnxRuntimeBackend
from harness.loadgen.isolated import RunRequest, run_isolated
from harness.loadgen.runner import performance_figures, read_detail_log
from harness.loadgen.scenarios import DurationProfile
from harness.workflow import ensure_model
from workload.config import HarnessConfig, load_workload
from workload.errors import HarnessError
from workload.files import save_figure, write_json
from workload.inputs import load_workload_data

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench")
LATENCY_RATIO_FLAT = 1.5  # last window's p99 over the first's
RSS_GROWTH_FLAT_MB = 32.0


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RecordingBackend:
    """The ONNX Runtime backend, writing ``time_s latency_ms rss_mb`` per inference to ``record`` (in the child)."""

    def __init__(self, model: Path, harness: HarnessConfig, output_name: str, record: Path) -> None:
        self.backend = OnnxRuntimeBackend(model, harness, output_name)
        self.record = record.open("a", buffering=1 << 16)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        scores = self.backend.predict(batch)
        self.record.write(f"{time.time():.6f} {(time.perf_counter() - start) * 1000:.4f} {rss_mb():.1f}\n")
        return scores


def windows(rows: np.ndarray, window_s: float) -> list[dict[str, float]]:
    """p50/p99 latency, count and RSS at the end of each window of the run."""
    start = rows[0, 0]
    index = ((rows[:, 0] - start) // window_s).astype(int)
    table = []
    for k in range(index.max() + 1):
        part = rows[index == k]
        if len(part):
            table.append({"window": k, "start_s": k * window_s, "inferences": len(part),
                          "p50_ms": float(np.percentile(part[:, 1], 50)),
                          "p99_ms": float(np.percentile(part[:, 1], 99)), "rss_mb": float(part[-1, 2])})
    return table


def plot(table: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    starts = [row["start_s"] for row in table]
    top.plot(starts, [row["p50_ms"] for row in table], marker="o", label="p50")
    top.plot(starts, [row["p99_ms"] for row in table], marker="o", label="p99")
    top.set_ylabel("inference latency (ms)")
    top.legend()
    bottom.plot(starts, [row["rss_mb"] for row in table], marker="o", color="tab:green")
    bottom.set_ylabel("LoadGen child RSS (MiB)")
    bottom.set_xlabel("window start (s)")
    figure.suptitle(title)
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak")
    parser.add_argument("--workload", default="mobilenetv2")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--window-s", type=float, default=20.0)
    args = parser.parse_args(argv)
    try:
        config = load_workload(ROOT / "workloads" / f"{args.workload}.yaml")
        model = ensure_model(config, ROOT, "int8")
        _, _, evaluation = load_workload_data(config, ROOT, show_progress=False)
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        record = Path(scratch) / "record.txt"
        factory = functools.partial(RecordingBackend, model, config.harness, config.model.output_name, record)
        profile = DurationProfile("soak", int(args.minutes * 60_000), {"Server": 1})
        request = RunRequest("Server", "performance", profile, config.harness, Path(evaluation.filename),
                             config.model.label_offset, factory, Path(scratch) / "logs",
                             f"soak of {config.name} Server, {args.minutes} min")
        (Path(scratch) / "logs").mkdir()
        outcome = run_isolated(request)
        detail = read_detail_log(Path(scratch) / "logs" / "mlperf_log_detail.txt")
        figures = performance_figures(detail, "Server")
        rows = np.loadtxt(record, ndmin=2)
    measurement_calls = 31  # the speed measurement before LoadGen starts (isolated.measure) is left out
    table = windows(rows[measurement_calls:], args.window_s)
    if len(table) > 2:
        table = table[:-1]  # the last window is cut short by the end of the run
    first, last = table[0], table[-1]
    verdict = {"p99_ratio_last_to_first": last["p99_ms"] / first["p99_ms"],
               "p50_ratio_last_to_first": last["p50_ms"] / first["p50_ms"],
               "rss_growth_mb": last["rss_mb"] - first["rss_mb"]}
    verdict["flat"] = bool(verdict["p99_ratio_last_to_first"] <= LATENCY_RATIO_FLAT
                           and verdict["rss_growth_mb"] <= RSS_GROWTH_FLAT_MB)
    print(f"{'window':>6} {'start s':>8} {'inferences':>10} {'p50 ms':>8} {'p99 ms':>8} {'RSS MiB':>8}")
    for row in table:
        print(f"{row['window']:>6} {row['start_s']:>8.0f} {row['inferences']:>10} {row['p50_ms']:>8.2f} "
              f"{row['p99_ms']:>8.2f} {row['rss_mb']:>8.1f}")
    print(f"LoadGen: {figures['validity']}, target {detail.get('requested_server_target_qps')} QPS, "
          f"p99 {figures.get('p99_ms', float('nan')):.2f} ms; last/first window p99 "
          f"{verdict['p99_ratio_last_to_first']:.2f}x, RSS {verdict['rss_growth_mb']:+.1f} MiB: "
          f"{'flat' if verdict['flat'] else 'NOT flat'}")
    result = {"workload": config.name, "model": str(model.relative_to(ROOT)), "minutes": args.minutes,
              "window_s": args.window_s, "measured_single_latency_ms": outcome.measurement.single_latency_ms,
              "target_qps": detail.get("requested_server_target_qps"), "loadgen": figures,
              "flat_if": {"p99_ratio_at_most": LATENCY_RATIO_FLAT, "rss_growth_mb_at_most": RSS_GROWTH_FLAT_MB},
              "verdict": verdict, "windows": table, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = ROOT / "results" / "benchmarks"
    write_json(out / "soak.json", result)
    plot(table, out / "soak.png", f"{config.name} Server soak, {args.minutes:g} min at the harness's target QPS")
    print(f"wrote {out / 'soak.json'} and soak.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
