"""Accuracy by technique combination (CLE, high-bias absorption, bias correction, auto) with the peers.

One table per model (MobileNetV2, EfficientNet-Lite0) on the 1000 sample images, calibrated on the 500
even-position images. Rows: none, CLE, CLE+BA, CLE+BA+BC (empirical), CLE+BA+BC (analytical), GPTQ (with the
workload's range method, in act-order and with percentile), CLE+BA+GPTQ, the fused and activation-aware CLE
variants (with BA+BC, or with GPTQ in both column orders) and auto, per-tensor and per-channel,
then the peers measured in the same run: ONNX Runtime ``quantize_static`` (MinMax), NNCF 3.4.0 (fast and full bias
correction; per-channel, its default), AIMET-ONNX 2.42.0 (CLE + QuantSim; per-tensor, its default). Every
quantizer runs as a child process (``benchmarks/peers/run_peer.py``), ours through this file's ``quantize``
sub-command, so its time and peak memory are its own. Every int8 model is evaluated here with ORT_ENABLE_ALL:
top-1/top-5, drop, agreement with float (all images, calibration half, held-out half), logit SQNR, and
throughput (batch 32, median of repeats). A peer that cannot run gets its reason in the ``error`` column.

    python -m benchmarks.techniques                                  # everything (long: about an hour here)
    python -m benchmarks.techniques --models mobilenetv2 --weights per-tensor --rows none CLE+BA auto --peers
    python -m benchmarks.techniques quantize FP32 CAL.npy OUT.onnx --workload W --weights per-tensor \
        --techniques fold_bn,cle,profile                             # one of our rows (the child process)

Writes results/benchmarks/techniques.json after every row (staged, then renamed; rows of an earlier run
that this run did not measure are kept, each row carrying its own figures) and
build/<model>/plots/accuracy_by_technique.png (int8 top-1 by row).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd

from benchmarks.common import fidelity, prepare_inputs, run_main
from benchmarks.peers.run_peer import PeerError, run_measured
from calibration.graph.io import load_model, save_model
from calibration.graph.session import make_session, run_batches
from calibration.pipeline import held_out_agreement
from calibration.quantize import quantize
from harness.sample_data import fill_sample_images
from workload.config import load_workload, with_overrides
from workload.files import save_figure, write_json
from workload.paths import build_dir

ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger("bench-techniques")

MODELS = ("mobilenetv2", "efficientnet-lite0")
ROWS: dict[str, str] = {
    "none": "fold_bn,profile",
    "CLE": "fold_bn,cle,profile",
    "CLE+BA": "fold_bn,cle,high_bias_absorption,profile",
    "CLE+BA+BC(emp)": "fold_bn,cle,high_bias_absorption,profile,bias_correction:empirical",
    "CLE+BA+BC(analytical)": "fold_bn,cle,high_bias_absorption,profile,bias_correction:analytical",
    "GPTQ": "fold_bn,profile,gptq",
    "GPTQ(act-order)": "fold_bn,profile,gptq:act_order",
    "GPTQ(percentile)": "fold_bn,profile,gptq",
    "CLE+BA+GPTQ": "fold_bn,cle,high_bias_absorption,profile,gptq",
    "CLE(fused)+BA+BC(emp)": "fold_bn,cle:fused,high_bias_absorption,profile,bias_correction:empirical",
    "CLE(aware)+BA+BC(emp)": "fold_bn,cle:activation_aware,high_bias_absorption,profile,bias_correction:empirical",
    "CLE(aware,fused)+BA+BC(emp)": ("fold_bn,cle:activation_aware_fused,high_bias_absorption,profile,"
                                    "bias_correction:empirical"),
    "CLE(fused)+GPTQ": "fold_bn,cle:fused,profile,gptq",
    "CLE(aware,fused)+GPTQ": "fold_bn,cle:activation_aware_fused,profile,gptq",
    "CLE(aware,fused)+GPTQ(act-order)": "fold_bn,cle:activation_aware_fused,profile,gptq:act_order",
    "auto": "auto",
}
# Rows that change the workload's activation range method (the others use the YAML's, mean_minmax).
ROW_RANGE: dict[str, str] = {"GPTQ(percentile)": "percentile"}
PEERS = ("ort-static", "nncf-fast-bc", "nncf-full-bc", "aimet")


def throughput(session: ort.InferenceSession, images: np.ndarray, args: argparse.Namespace) -> float:
    """Median images per second over ``args.repeats`` timed passes of ``args.batches`` batches, after a warm-up."""
    name = session.get_inputs()[0].name
    feeds = [np.ascontiguousarray(images[i * args.batch_size:(i + 1) * args.batch_size]) for i in range(args.batches)]
    session.run(None, {name: feeds[0]})
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for feed in feeds:
            session.run(None, {name: feed})
        rates.append(args.batch_size * args.batches / (time.perf_counter() - start))
    return statistics.median(rates)


def evaluate(model_path: Path, images: np.ndarray, labels: np.ndarray, label_offset: int,
             float_logits: np.ndarray | None, args: argparse.Namespace) -> tuple[dict[str, float], np.ndarray]:
    """Top-1/top-5, agreement and SQNR against float (when given), throughput; ORT_ENABLE_ALL."""
    session = make_session(load_model(model_path), optimize=True, spinning=True)
    logits = run_batches(session, images, batch_size=args.batch_size)
    figures = {**fidelity(logits, labels, label_offset, float_logits), "img_per_s": throughput(session, images, args)}
    return figures, logits


def peer_command(peer: str, weights: str, fp32: Path, calibration: Path, output: Path) -> list[str] | str | None:
    """The peer's command line, why it cannot run, or None where it does not offer this granularity
    (NNCF's default is per-channel weights, AIMET's default QuantSim config per-tensor)."""
    common = [str(fp32), str(calibration), str(output)]
    if peer == "ort-static":
        return [sys.executable, "-m", "benchmarks.peers.ort_static", *common, "--method", "MinMax",
                *(["--per-channel"] if weights == "per-channel" else [])]
    if peer.startswith("nncf"):
        if weights != "per-channel":
            return None
        python = ROOT / ".venv-nncf" / "bin" / "python"
        flag = "--fast-bias-correction" if peer == "nncf-fast-bc" else "--full-bias-correction"
        return [str(python), str(ROOT / "benchmarks" / "peers" / "nncf_quantize.py"), *common, flag] \
            if python.is_file() else "no .venv-nncf (bash benchmarks/peers/setup.sh nncf)"
    if weights != "per-tensor":
        return None
    python = ROOT / ".venv-aimet" / "bin" / "python"
    return [str(python), str(ROOT / "benchmarks" / "peers" / "aimet_quantize.py"), *common] \
        if python.is_file() else "no .venv-aimet (bash benchmarks/peers/setup.sh aimet)"


def row_label(row: str) -> str:
    return ROWS[row] + (f" (range {ROW_RANGE[row]})" if row in ROW_RANGE else "")


def our_command(name: str, weights: str, row: str, fp32: Path, calibration: Path, output: Path) -> list[str]:
    command = [sys.executable, "-m", "benchmarks.techniques", "quantize", str(fp32), str(calibration), str(output),
               "--workload", name, "--weights", weights, "--techniques", ROWS[row]]
    return command + (["--range", ROW_RANGE[row]] if row in ROW_RANGE else [])


def quantize_child(args: argparse.Namespace) -> int:
    """One of our rows: the technique steps (or the auto search) and the QDQ writer; the report beside it."""
    config = with_overrides(load_workload(ROOT / "workloads" / f"{args.workload}.yaml"), args.weights, args.range,
                            args.techniques)
    images = np.load(args.calibration, mmap_mode="r")
    model = load_model(args.fp32)
    result = quantize(model, config, images, show_progress=False)
    save_model(result.model, args.output)
    write_json(args.output.with_suffix(".report.json"), result.state.report)
    return 0


def bench_model(name: str, args: argparse.Namespace, rows: list[dict[str, Any]],
                saved: Callable[[], None]) -> None:
    """Append ``name``'s rows to ``rows``, calling ``saved`` after each one (a long run keeps what it measured)."""
    work = ROOT / "build" / "bench-techniques" / name
    inputs = prepare_inputs(ROOT, name, work)
    config, dataset, fp32, evaluation = inputs.config, inputs.dataset, inputs.fp32, inputs.evaluation
    calibration_path = inputs.calibration
    labels, offset = dataset.labels, config.model.label_offset
    in_calibration = np.isin(dataset.names, dataset.calibration_names)
    float_figures, float_logits = evaluate(fp32, evaluation, labels, offset, None, args)
    base = {"model": name, "float_top1": float_figures["top1"], "float_top5": float_figures["top5"]}
    rows.append({**base, "row": "float", "weights": "-", "tool": "float", "img_per_s": float_figures["img_per_s"]})
    jobs: list[tuple[str, str, str, list[str] | str | None, Path]] = []
    for weights in args.weights:
        for row in args.rows:
            output = work / f"ours-{row}-{weights}.int8.onnx"
            jobs.append(("ours", row, weights, our_command(name, weights, row, fp32, calibration_path, output),
                         output))
        for peer in args.peers:
            output = work / f"{peer}-{weights}.int8.onnx"
            jobs.append((peer, peer, weights, peer_command(peer, weights, fp32, calibration_path, output), output))
    for tool, row_name, weights, command, output in jobs:
        row: dict[str, Any] = {**base, "row": row_name, "weights": weights, "tool": tool}
        if command is None:
            continue  # a granularity the peer does not offer: no row
        if isinstance(command, str):
            rows.append({**row, "error": command})
            saved()
            continue
        log.info("%s: %s %s", name, row_name, weights)
        try:
            seconds, peak_bytes = run_measured(command, ROOT)
        except PeerError as err:
            log.error("%s: %s %s failed: %s", name, row_name, weights, err)
            rows.append({**row, "error": str(err).splitlines()[-1]})
            saved()
            continue
        figures, logits = evaluate(output, evaluation, labels, offset, float_logits, args)
        row.update({"int8_top1": figures["top1"], "int8_top5": figures["top5"],
                    "drop": float_figures["top1"] - figures["top1"], "agreement": figures["agreement"],
                    **held_out_agreement(float_logits, logits, in_calibration), "sqnr_db": figures["sqnr_db"],
                    "calib_s": seconds, "peak_gib": peak_bytes / (1 << 30), "img_per_s": figures["img_per_s"]})
        report = output.with_suffix(".report.json")
        if tool == "ours" and report.is_file():
            row["report"] = _row_report(json.loads(report.read_text()))
        rows.append(row)
        saved()
        log.info("%s: %s %s top-1 %.3f agreement %.3f (held out %.3f) in %.0f s", name, row_name, weights,
                 figures["top1"], figures["agreement"], row["agreement_held_out"], seconds)
    return rows


def _row_report(report: dict[str, Any]) -> dict[str, Any]:
    """What the table keeps of our report: the auto search's choice and scores, the BC summary."""
    kept: dict[str, Any] = {}
    if "technique_search" in report:
        kept["technique_search"] = report["technique_search"]
    if "bias_correction" in report:
        kept["bias_correction"] = {k: v for k, v in report["bias_correction"].items() if k != "layers"}
    return kept


def plot_rows(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Int8 top-1 by technique combination (ours and peers), float top-1 as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in rows if "int8_top1" in r]
    if not measured:
        return
    labels = [f"{r['row']} ({r['weights']})" for r in measured]
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 0.4 * len(measured) + 1.5))
    colors = ["tab:blue" if r["tool"] == "ours" else "tab:gray" for r in measured]
    ax.barh(labels, [100 * r["int8_top1"] for r in measured], color=colors)
    for i, r in enumerate(measured):
        ax.text(100 * r["int8_top1"], i, f" {100 * r['int8_top1']:.1f} ({100 * r['agreement']:.1f} % agr.)",
                va="center", fontsize=8)
    ax.axvline(100 * measured[0]["float_top1"], color="tab:red", linestyle="--", label="float")
    ax.set_xlim(max(0.0, min(100 * r["int8_top1"] for r in measured) - 10), 100)
    ax.set_xlabel("int8 top-1 on the 1000 images (%)")
    ax.set_title(title)
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="accuracy by technique combination, with the peers")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--rows", nargs="*", choices=list(ROWS), default=list(ROWS), help="our rows (none: skip)")
    parser.add_argument("--peers", nargs="*", choices=PEERS, default=list(PEERS), help="peers (none: skip)")
    parser.add_argument("--weights", nargs="+", choices=["per-tensor", "per-channel"],
                        default=["per-tensor", "per-channel"])
    parser.add_argument("--batch-size", type=int, default=32, help="inference batch for evaluation and speed")
    parser.add_argument("--batches", type=int, default=4, help="batches per timed throughput pass")
    parser.add_argument("--repeats", type=int, default=5, help="timed throughput passes (the median is kept)")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "benchmarks" / "techniques.json")
    return parser.parse_args()


def parse_child_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="one of our technique rows (run as a child process)")
    parser.add_argument("fp32", type=Path)
    parser.add_argument("calibration", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--workload", required=True)
    parser.add_argument("--weights", choices=["per-tensor", "per-channel"], required=True)
    parser.add_argument("--techniques", required=True)
    parser.add_argument("--range", default=None, help="activation range method (default: the workload's)")
    return parser.parse_args(argv)


def merged_rows(earlier: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This run's rows, plus an earlier file's rows for the (model, row, weights) this run did not measure."""
    fresh = {(r["model"], r["row"], r["weights"]) for r in rows}
    return [r for r in earlier if (r["model"], r["row"], r["weights"]) not in fresh] + rows


def print_tables(rows: list[dict[str, Any]]) -> None:
    columns = ["row", "weights", "float_top1", "float_top5", "int8_top1", "int8_top5", "drop", "agreement",
               "agreement_calibration", "agreement_held_out", "sqnr_db", "calib_s", "peak_gib", "img_per_s",
               "error"]
    table = pd.DataFrame(rows)
    for name, group in table.groupby("model", sort=False):
        shown = group[[c for c in columns if c in group]].fillna("")
        with pd.option_context("display.max_columns", None, "display.width", 250, "display.float_format",
                               "{:.3f}".format):
            print(f"\n{name}\n{shown.to_string(index=False)}")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if len(sys.argv) > 1 and sys.argv[1] == "quantize":
        return quantize_child(parse_child_args(sys.argv[2:]))
    args = parse_args()
    samples = os.environ.get("IMAGENET_SAMPLES_DIR", "").strip()
    fill_sample_images(ROOT / "data" / "imagenet-samples", Path(samples) if samples else None)
    started = time.perf_counter()
    earlier = json.loads(args.output.read_text())["rows"] if args.output.is_file() else []
    rows: list[dict[str, Any]] = []

    def saved() -> None:
        document = {
            "environment": {"python": platform.python_version(), "onnxruntime": ort.__version__,
                            "numpy": np.__version__, "cpus": os.cpu_count(), "machine": platform.machine()},
            "settings": {"calibration_images": "500 even-position sample images", "evaluation_images": 1000,
                         "held_out": "agreement_held_out: the 500 odd-position images, never used for calibration",
                         "batch_size": args.batch_size, "batches": args.batches, "repeats": args.repeats,
                         "graph_optimization": "ORT_ENABLE_ALL", "rows": {r: row_label(r) for r in args.rows},
                         "peers": args.peers},
            "total_seconds": round(time.perf_counter() - started, 1),
            "rows": merged_rows(earlier, rows),
        }
        write_json(args.output, document)

    for name in args.models:
        first = len(rows)
        bench_model(name, args, rows, saved)
        plot_rows(rows[first:], build_dir(ROOT, name) / "plots" / "accuracy_by_technique.png",
                  f"{name}: int8 top-1 by technique combination (1000 images)")
    print_tables(rows)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
