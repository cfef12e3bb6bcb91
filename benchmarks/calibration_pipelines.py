"""Whole calibration pipelines against ONNX Runtime's ``quantize_static`` MinMax, in one run: time per step,
peak memory, fidelity, and the same on a busy machine.

Cases (per-channel weights, the 500 even-position sample images):
- the default lists of MobileNetV2 and EfficientNet-Lite0 (their workload YAMLs);
- the ResNet50-shaped stand-in (random weights, the resnet50 workload's preprocessing) with ``fold_bn,profile,gptq``;
- ``TECHNIQUES=auto`` on MobileNetV2;
- MobileNetV2's default list and quantize_static again with one competing CPU-bound process
  (``python -c 'while True: pass'``) on the cores.

Every quantizer runs as a child process (``benchmarks/peers/run_peer.py``: wall time, peak RSS); ours also writes
its steps' times. Each timing is the median of ``--repeats`` runs, and each ratio compares with quantize_static
in the same run under the same load. Fidelity: top-1 agreement with float on the 1000 sample images, and, with
``--before DIR`` (``<workload>-per-channel.int8.onnx`` files from an earlier commit), that model's agreement and
the number of images on which the two int8 models' top-1 differ.

    python -m benchmarks.calibration_pipelines [--cases mobilenetv2 ...] [--repeats 3] [--before /tmp/baseline]

Writes results/benchmarks/calibration_speed.json, a plot beside it, and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.calibration_speed import GIB, source_state
from benchmarks.common import BenchInputs, fidelity, prepare_inputs, run_main, start_benchmark
from benchmarks.peers.run_peer import run_measured
from calibration.graph.io import load_model, save_model
from calibration.graph.session import make_session, run_batches
from calibration.source.models.resnet50 import build_resnet50_shaped
from workload.config import DatasetConfig, load_workload
from workload.files import save_array, save_figure, write_json
from workload.inputs import load_workload_data

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench-calibration-pipelines")

RESNET = "resnet50-shaped"


@dataclass(frozen=True)
class Case:
    name: str
    workload: str  # whose inputs and YAML settings
    techniques: str | None  # None: the YAML's list
    busy: bool = False  # one competing CPU-bound process during both quantizers


CASES = {c.name: c for c in (
    Case("mobilenetv2", "mobilenetv2", None),
    Case("efficientnet-lite0", "efficientnet-lite0", None),
    Case(RESNET, RESNET, "fold_bn,profile,gptq"),
    Case("mobilenetv2-auto", "mobilenetv2", "auto"),
    Case("mobilenetv2-busy", "mobilenetv2", None, busy=True),
)}


def resnet_inputs(work: Path) -> BenchInputs:
    """The random-weight ResNet50 stand-in on the sample images, preprocessed as the resnet50 workload says."""
    config = load_workload(ROOT / "workloads" / "resnet50.yaml")
    config = dataclasses.replace(config, dataset=DatasetConfig())
    dataset, calibration, evaluation = load_workload_data(config, ROOT, show_progress=False)
    work.mkdir(parents=True, exist_ok=True)
    save_model(build_resnet50_shaped(), work / "model.fp32.onnx")
    save_array(work / "calibration.npy", calibration)
    return BenchInputs(config, dataset, work / "model.fp32.onnx", work / "calibration.npy", len(calibration),
                       np.asarray(evaluation))


@contextmanager
def competing_process(active: bool) -> Iterator[None]:
    """One CPU-bound child for the duration (ended by its own pid), or nothing."""
    if not active:
        yield
        return
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        child.kill()
        child.wait()


def timed(command: list[str], repeats: int, report: Path | None) -> dict[str, Any]:
    """Median wall time and peak memory over ``repeats`` runs, and our steps' median times when reported."""
    seconds, peaks, steps = [], [], []
    for _ in range(repeats):
        s, peak = run_measured(command, ROOT)
        seconds.append(s)
        peaks.append(peak / GIB)
        if report is not None:
            steps.append(json.loads(report.read_text()))
    result: dict[str, Any] = {"calib_s": statistics.median(seconds), "calib_s_runs": seconds,
                              "peak_gib": max(peaks)}
    if steps:
        result["steps"] = {row["step"]: statistics.median(r["steps"][i]["seconds"] for r in steps)
                           for i, row in enumerate(steps[0]["steps"])}
        if "technique_search" in steps[-1]:
            search = steps[-1]["technique_search"]
            result["chosen"] = search["chosen"]
            result["scored_on"] = search["scored_on"]
            result["candidates"] = {c["label"]: {"seconds": c["seconds"], "agreement": c["agreement"]}
                                    for c in search["candidates"]}
    return result


def bench_case(case: Case, inputs: BenchInputs, float_logits: np.ndarray, work: Path,
               args: argparse.Namespace) -> dict[str, Any]:
    common = [str(inputs.fp32), str(inputs.calibration)]
    ort_out, ours_out, report = work / f"{case.name}.ort.int8.onnx", work / f"{case.name}.int8.onnx", \
        work / f"{case.name}.report.json"
    ort = [sys.executable, "-m", "benchmarks.peers.ort_static", *common, str(ort_out), "--method", "MinMax",
           "--per-channel", "--batch-size", "10"]
    ours = [sys.executable, "-m", "benchmarks.peers.ours_quantize", *common, str(ours_out),
            "--workload", "resnet50" if case.workload == RESNET else case.workload, "--weights", "per-channel",
            "--report", str(report)]
    if case.techniques:
        ours += ["--techniques", case.techniques]
    log.info("%s: quantize_static MinMax%s", case.name, " (busy)" if case.busy else "")
    with competing_process(case.busy):
        ort_figures = timed(ort, args.repeats, None)
        log.info("%s: ours", case.name)
        ours_figures = timed(ours, args.repeats, report)
    row: dict[str, Any] = {"case": case.name, "techniques": case.techniques or "workload default",
                           "busy": case.busy, **ours_figures,
                           "ort_calib_s": ort_figures["calib_s"], "ort_peak_gib": ort_figures["peak_gib"],
                           "time_vs_ort_minmax": ours_figures["calib_s"] / ort_figures["calib_s"],
                           "memory_vs_ort_minmax": ours_figures["peak_gib"] / ort_figures["peak_gib"]}
    labels, offset = inputs.dataset.labels, inputs.config.model.label_offset
    logits = run_batches(make_session(load_model(ours_out), optimize=True), inputs.evaluation, 32)
    row.update(fidelity(logits, labels, offset, float_logits))
    ort_logits = run_batches(make_session(load_model(ort_out), optimize=True), inputs.evaluation, 32)
    row["ort_agreement"] = fidelity(ort_logits, labels, offset, float_logits)["agreement"]
    before = args.before / f"{case.workload}-per-channel.int8.onnx" if args.before else None
    if before is not None and before.is_file() and case.techniques is None:
        previous = run_batches(make_session(load_model(before), optimize=True), inputs.evaluation, 32)
        row["agreement_before"] = fidelity(previous, labels, offset, float_logits)["agreement"]
        row["top1_changed_vs_before"] = int(np.sum(previous.argmax(1) != logits.argmax(1)))
    log.info("%s: %.1f s (quantize_static %.1f s, %.2fx), peak %.2f GiB, agreement %.3f", case.name,
             row["calib_s"], row["ort_calib_s"], row["time_vs_ort_minmax"], row["peak_gib"], row["agreement"])
    return row


def add_busy_ratios(rows: list[dict[str, Any]]) -> None:
    """A busy case's time against the quiet run of the same list."""
    quiet = {(r["case"].removesuffix("-busy"), r["techniques"]): r for r in rows if not r["busy"]}
    for row in rows:
        base = quiet.get((row["case"].removesuffix("-busy"), row["techniques"])) if row["busy"] else None
        if base is not None:
            row["busy_vs_quiet"] = row["calib_s"] / base["calib_s"]
            row["ort_busy_vs_quiet"] = row["ort_calib_s"] / base["ort_calib_s"]


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Stacked step times of each case beside quantize_static's time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.6 * len(rows) + 1.5))
    for i, row in enumerate(rows):
        left = 0.0
        for step, seconds in row.get("steps", {}).items():
            ax.barh(i, seconds, left=left, label=step.split(":")[0] if i == 0 else None)
            left += seconds
        ax.plot(row["ort_calib_s"], i, "k|", markersize=18)
    ax.set_yticks(range(len(rows)), [r["case"] for r in rows])
    ax.set_xlabel("seconds (bars: our steps; black mark: quantize_static MinMax in the same run)")
    ax.invert_yaxis()
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    save_figure(fig, path)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="calibration pipelines vs quantize_static MinMax")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--repeats", type=int, default=1, help="runs of each quantizer (the median is kept)")
    parser.add_argument("--before", type=Path, help="folder of <workload>-per-channel.int8.onnx to compare with")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "benchmarks" / "calibration_speed.json")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    start_benchmark(ROOT)
    rows: list[dict[str, Any]] = []
    loaded: dict[str, tuple[BenchInputs, np.ndarray]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-pipelines-") as tmp:
        for name in args.cases:
            case = CASES[name]
            if case.workload not in loaded:
                work = ROOT / "build" / "bench-calibration" / case.workload
                inputs = resnet_inputs(work) if case.workload == RESNET else prepare_inputs(ROOT, case.workload, work)
                float_logits = run_batches(make_session(load_model(inputs.fp32), optimize=True), inputs.evaluation, 32)
                loaded[case.workload] = (inputs, float_logits)
            rows.append(bench_case(case, *loaded[case.workload], Path(tmp), args))
    add_busy_ratios(rows)
    write_json(args.output, {"source": source_state(), "cpus": os.cpu_count(), "repeats": args.repeats,
                             "weights": "per-channel", "calibration_images": 500, "evaluation_images": 1000,
                             "rows": rows})
    plot(rows, args.output.with_suffix(".png"))
    columns = ["case", "calib_s", "ort_calib_s", "time_vs_ort_minmax", "peak_gib", "ort_peak_gib", "agreement",
               "agreement_before", "top1_changed_vs_before", "busy_vs_quiet", "ort_busy_vs_quiet", "chosen"]
    table = pd.DataFrame(rows)
    with pd.option_context("display.max_columns", None, "display.width", 220, "display.float_format", "{:.3f}".format):
        print(table[[c for c in columns if c in table]].to_string(index=False))
        for row in rows:
            print(row["case"], "steps:", ", ".join(f"{k} {v:.1f} s" for k, v in row.get("steps", {}).items()))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
