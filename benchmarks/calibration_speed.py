"""The project's calibration against ONNX Runtime's ``quantize_static``, side by side, in one run.

For each model (MobileNetV2, EfficientNet-Lite0) both tools start from the same float ONNX model and the
same calibration tensors (the 500 images at even positions), with the same weight granularity. Each
quantizer runs as a child process, so its wall time and peak resident memory are its own
(``benchmarks/peers/run_peer.py``). Every int8 model, and the float model, is then evaluated here on the
1000 sample images with ONNX Runtime (ORT_ENABLE_ALL):
- top-1 and top-5, top-1 agreement with float, logit SQNR against float;
- throughput in images per second (batch 32, median of round-robin repeats over all of a model's variants).
Ratios compare each run with ``quantize_static`` MinMax at the same granularity (time, memory, speed).

    python -m benchmarks.calibration_speed                      # both models, every method, per-channel
    python -m benchmarks.calibration_speed --models mobilenetv2 --ours minmax mean_minmax --ort MinMax \
        --weights per-channel per-tensor

Writes results/benchmarks/calibration.json (staged, then renamed) and prints the table.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd

from benchmarks.common import fidelity, prepare_inputs, run_main, start_benchmark
from benchmarks.peers.run_peer import PeerError, run_measured
from calibration.graph.io import load_model
from calibration.graph.session import make_session, run_batches
from workload.files import write_json

ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger("bench-calibration")

MODELS = ("mobilenetv2", "efficientnet-lite0")
OURS_METHODS = ("minmax", "mean_minmax", "percentile", "mse", "entropy")
ORT_METHODS = ("MinMax", "Entropy", "Percentile")
GIB = 1 << 30
# ORT's histogram methods stack the batches of each tensor, so every batch must have the same size: the
# calibration batch is the largest divisor of the image count up to this.
ORT_MAX_BATCH = 16
# They also keep every activation of every batch in RAM (over 19 GB on MobileNetV2 with 500 images, killed
# here); ORT's CalibStridedMinMax option collects at most this many batches at a time.
ORT_HISTOGRAM_MAX_STRIDE = 5


def largest_divisor(count: int, limit: int) -> int:
    return max(d for d in range(1, limit + 1) if count % d == 0)


@dataclass(frozen=True)
class Run:
    tool: str  # "ours" or "ort"
    method: str
    weights: str

    @property
    def label(self) -> str:
        return f"{self.tool}-{self.method}-{self.weights}"


def quantizer_command(run: Run, workload: str, fp32: Path, calibration: Path, images: int,
                      output: Path) -> list[str]:
    common = [str(fp32), str(calibration), str(output)]
    if run.tool == "ours":
        # Range methods against range methods: BN folding and profiling only, not the workload's gptq.
        return [sys.executable, "-m", "benchmarks.peers.ours_quantize", *common, "--workload", workload,
                "--range", run.method, "--weights", run.weights, "--techniques", "fold_bn,profile"]
    batch = largest_divisor(images, ORT_MAX_BATCH)
    options = ["--method", run.method, "--batch-size", str(batch)]
    if run.weights == "per-channel":
        options.append("--per-channel")
    if run.method != "MinMax":  # MinMax keeps ORT's defaults: its memory figure is the baseline
        options += ["--stride-batches", str(largest_divisor(images // batch, ORT_HISTOGRAM_MAX_STRIDE))]
    return [sys.executable, "-m", "benchmarks.peers.ort_static", *common, *options]


def round_robin_throughput(sessions: dict[str, ort.InferenceSession], images: np.ndarray, batch_size: int,
                           batches: int, repeats: int) -> dict[str, float]:
    """Median images per second of each session. Every round times each session once, in turn, so a change
    in the machine's load during the run touches all models alike."""
    feeds = [np.ascontiguousarray(images[i * batch_size : (i + 1) * batch_size]) for i in range(batches)]
    names = {label: session.get_inputs()[0].name for label, session in sessions.items()}
    for label, session in sessions.items():  # warm-up
        session.run(None, {names[label]: feeds[0]})
    rates: dict[str, list[float]] = {label: [] for label in sessions}
    for _ in range(repeats):
        for label, session in sessions.items():
            start = time.perf_counter()
            for feed in feeds:
                session.run(None, {names[label]: feed})
            rates[label].append(batch_size * batches / (time.perf_counter() - start))
    return {label: statistics.median(values) for label, values in rates.items()}


def evaluate(session: ort.InferenceSession, images: np.ndarray, labels: np.ndarray, label_offset: int,
             float_logits: np.ndarray | None, batch_size: int) -> tuple[dict[str, float], np.ndarray]:
    logits = run_batches(session, images, batch_size=batch_size)
    return fidelity(logits, labels, label_offset, float_logits), logits


def bench_model(name: str, runs: list[Run], args: argparse.Namespace) -> list[dict[str, Any]]:
    work = ROOT / "build" / "bench-calibration" / name
    inputs = prepare_inputs(ROOT, name, work)
    config, fp32, calibration_path, evaluation = inputs.config, inputs.fp32, inputs.calibration, inputs.evaluation
    labels, offset = inputs.dataset.labels, config.model.label_offset
    log.info("%s: %d calibration images, %d evaluation images", name, inputs.calibration_count, len(evaluation))

    sessions = {"float": make_session(load_model(fp32), optimize=True, spinning=True)}
    float_figures, float_logits = evaluate(sessions["float"], evaluation, labels, offset, None, args.batch_size)
    rows: list[dict[str, Any]] = [{"model": name, "tool": "float", "method": "-", "weights": "-", "label": "float",
                                   **float_figures}]
    for run in runs:
        output = work / f"{run.label}.int8.onnx"
        row: dict[str, Any] = {"model": name, "tool": run.tool, "method": run.method, "weights": run.weights,
                               "label": run.label}
        log.info("%s: %s", name, run.label)
        try:
            seconds, peak_bytes = run_measured(
                quantizer_command(run, name, fp32, calibration_path, inputs.calibration_count, output), ROOT)
        except PeerError as err:
            log.error("%s: %s failed: %s", name, run.label, err)
            rows.append({**row, "error": str(err).splitlines()[-1]})
            continue
        sessions[run.label] = make_session(load_model(output), optimize=True, spinning=True)
        figures, _ = evaluate(sessions[run.label], evaluation, labels, offset, float_logits, args.batch_size)
        rows.append({**row, "calib_s": seconds, "peak_gib": peak_bytes / GIB, **figures})
        log.info("%s: %s took %.1f s, peak %.2f GiB, top-1 %.3f, agreement %.3f", name, run.label, seconds,
                 peak_bytes / GIB, figures["top1"], figures["agreement"])
    log.info("%s: throughput of %d models, round robin", name, len(sessions))
    rates = round_robin_throughput(sessions, evaluation, args.batch_size, args.batches, args.repeats)
    for row in rows:
        if row["label"] in rates:
            row["img_per_s"] = rates[row["label"]]
    add_ratios(rows, rates["float"])
    return rows


def add_ratios(rows: list[dict[str, Any]], float_rate: float) -> None:
    """Time, memory and speed relative to quantize_static MinMax at the same granularity; speed vs float."""
    baselines = {r["weights"]: r for r in rows if r["tool"] == "ort" and r["method"] == "MinMax" and "calib_s" in r}
    for row in rows:
        if "img_per_s" in row and row["tool"] != "float":
            row["speed_vs_float"] = row["img_per_s"] / float_rate
        base = baselines.get(row["weights"])
        if base is not None and "calib_s" in row:
            row["time_vs_ort_minmax"] = row["calib_s"] / base["calib_s"]
            row["memory_vs_ort_minmax"] = row["peak_gib"] / base["peak_gib"]
            row["speed_vs_ort_minmax"] = row["img_per_s"] / base["img_per_s"]


def source_state() -> dict[str, Any]:
    """The commit measured, and whether the working tree had uncommitted changes to tracked files."""
    def git(*arguments: str) -> str:
        result = subprocess.run(["git", *arguments], cwd=ROOT, capture_output=True, text=True, check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD") or "unknown",
            "uncommitted_changes": bool(git("status", "--porcelain", "--untracked-files=no"))}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="our calibration vs ONNX Runtime quantize_static")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--ours", nargs="*", choices=OURS_METHODS, default=list(OURS_METHODS),
                        help="our range methods (none: skip)")
    parser.add_argument("--ort", nargs="*", choices=ORT_METHODS, default=list(ORT_METHODS),
                        help="quantize_static calibration methods (none: skip)")
    parser.add_argument("--weights", nargs="+", choices=["per-channel", "per-tensor"], default=["per-channel"])
    parser.add_argument("--batch-size", type=int, default=32, help="inference batch for evaluation and speed")
    parser.add_argument("--batches", type=int, default=4, help="batches per timed throughput pass")
    parser.add_argument("--repeats", type=int, default=7, help="timed throughput rounds (the median is kept)")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "benchmarks" / "calibration.json")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    start_benchmark(ROOT)
    runs = [Run("ort", m, w) for w in args.weights for m in args.ort] + \
           [Run("ours", m, w) for w in args.weights for m in args.ours]
    source = source_state()
    started = time.perf_counter()
    rows = [row for name in args.models for row in bench_model(name, runs, args)]
    document = {
        "source": source,
        "environment": {"python": platform.python_version(), "onnxruntime": ort.__version__,
                        "numpy": np.__version__, "cpus": os.cpu_count(), "machine": platform.machine()},
        "settings": {"calibration_images": "500 even-position sample images", "evaluation_images": 1000,
                     "batch_size": args.batch_size, "batches": args.batches, "repeats": args.repeats,
                     "graph_optimization": "ORT_ENABLE_ALL",
                     "ort_quantize_static": "batch: largest divisor of the image count up to "
                                            f"{ORT_MAX_BATCH}; MinMax with ORT defaults; Entropy and Percentile with "
                                            f"CalibStridedMinMax (at most {ORT_HISTOGRAM_MAX_STRIDE} batches held at "
                                            "once) to fit in memory",
                     "ratios": "relative to quantize_static MinMax with the same weight granularity"},
        "total_seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    write_json(args.output, document)
    table = pd.DataFrame(rows)
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.float_format", "{:.3f}".format):
        print(table.drop(columns=[c for c in ("top5", "label") if c in table]).to_string(index=False))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
