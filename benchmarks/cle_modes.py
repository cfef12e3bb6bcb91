"""CLE / ReLU6-mode measurements on the 1000 shared images: float top-1 change of each ReLU6 mode,
int8 (per-tensor or per-channel) top-1 and agreement with float per technique combination,
whether ORT fuses every convolution, and throughput (batch 32): all models are timed round-robin
in one process, median over rounds, so that load from other processes hits every model alike.
The exact-ReLU6 model is also timed with its Min left in float between DQ and Q (the layout ORT's
quantizer writes), to show what the uint8 Min saves; the fused modes need no Min at all.

    IMAGENET_SAMPLES_DIR=../shared/data/imagenet-samples .venv/bin/python -m benchmarks.cle_modes \
        --workload mobilenetv2 --weights per-tensor --speed-rounds 15

Prints a table and writes results/benchmarks/cle_modes.json (staged, then renamed), replacing the
rows of the same workload and weights and keeping the others.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd

from benchmarks.common import load_workload_inputs, merged_rows, run_main
from calibration.evaluate import accuracy, top1_agreement
from calibration.graph.session import make_session, run_batches
from calibration.quant.writer import write_qdq_model
from calibration.quantize import quantize
from calibration.steps.state import PipelineState
from workload.config import parse_technique
from workload.files import write_json

ROOT = Path(__file__).resolve().parents[1]
COMBINATIONS = {
    "plain": "fold_bn,profile",
    "cle exact": "fold_bn,cle,profile",
    "cle exact+hba": "fold_bn,cle,high_bias_absorption,profile",
    "cle iterate": "fold_bn,cle:iterate,profile",
    "cle skip_relu6": "fold_bn,cle:skip_relu6,profile",
    "cle skip_relu6+hba": "fold_bn,cle:skip_relu6,high_bias_absorption,profile",
    "relu6_to_relu+cle": "fold_bn,relu6_to_relu,cle,profile",
    "relu6_to_relu+cle+hba": "fold_bn,relu6_to_relu,cle,high_bias_absorption,profile",
    "cle activation_aware": "fold_bn,cle:activation_aware,profile",
    "cle activation_aware+hba": "fold_bn,cle:activation_aware,high_bias_absorption,profile",
    "cle fused": "fold_bn,cle:fused,profile",
    "cle activation_aware_fused": "fold_bn,cle:activation_aware_fused,profile",
}
OUTPUT = ROOT / "results" / "benchmarks" / "cle_modes.json"


def throughputs(models: dict[str, onnx.ModelProto], images: np.ndarray, rounds: int) -> dict[str, float]:
    """img/s at batch 32 for each model, timed round-robin (2 batches per model per round), medians."""
    sessions = {name: make_session(model, optimize=True, spinning=True) for name, model in models.items()}
    batch = np.ascontiguousarray(images[:32])
    rates: dict[str, list[float]] = {name: [] for name in models}
    for session in sessions.values():
        session.run(None, {session.get_inputs()[0].name: batch})
    for _ in range(rounds):
        for name, session in sessions.items():
            feed = {session.get_inputs()[0].name: batch}
            start = time.perf_counter()
            for _ in range(2):
                session.run(None, feed)
            rates[name].append(2 * len(batch) / (time.perf_counter() - start))
    return {name: float(np.median(r)) for name, r in rates.items()}


def float_min_layout(state: PipelineState, per_channel: bool) -> onnx.ModelProto:
    """The same int8 model with each ReLU6 Min in float between DQ and Q (ORT quantizer's layout)."""
    plan = state.plan
    shared = {source: state.activations[next(n.output[0] for n in state.model.graph.node if n.name == node)]
              for node, source in plan.integer_min.items()}
    float_plan = replace(plan, integer_min={}, activations=[*plan.activations, *shared])
    model, _ = write_qdq_model(state.model, float_plan, {**state.activations, **shared}, per_channel)
    return model


def fused_ops(model: onnx.ModelProto) -> dict[str, int]:
    """Op counts of ORT's optimized graph (to check that every Conv became QLinearConv)."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    counts: dict[str, int] = {}
    for node in optimized.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", default="mobilenetv2")
    parser.add_argument("--weights", default="per-tensor", choices=["per-tensor", "per-channel"])
    parser.add_argument("--only", default="", help="comma-separated combination names")
    parser.add_argument("--speed-rounds", type=int, default=0, help="0: no throughput measurement")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data = load_workload_inputs(ROOT, args.workload)
    config, float_model, dataset, calibration, evaluation = (data.config, data.float_model, data.dataset,
                                                             data.calibration, data.evaluation)
    labels, offset = dataset.labels, config.model.label_offset
    float_logits = run_batches(make_session(float_model, optimize=True), evaluation)
    float_top1 = accuracy(float_logits, labels, offset).top1
    timed: dict[str, onnx.ModelProto] = {"float": float_model}
    rows: list[dict] = []
    chosen = [c for c in args.only.split(",") if c] or list(COMBINATIONS)
    for name in chosen:
        steps = tuple(parse_technique(t, "combination") for t in COMBINATIONS[name].split(","))
        cfg = replace(config, calibration=replace(config.calibration, techniques=steps, weights=args.weights))
        start = time.perf_counter()
        result = quantize(float_model, cfg, calibration, show_progress=False)
        state, int8_model = result.state, result.model
        seconds = time.perf_counter() - start
        transformed = run_batches(make_session(state.model, optimize=True), evaluation)
        int8_logits = run_batches(make_session(int8_model, optimize=True), evaluation)
        ops = fused_ops(int8_model)
        rows.append({
            "workload": args.workload, "weights": args.weights, "combination": name,
            "float_top1": float_top1,
            "float_top1_change": accuracy(transformed, labels, offset).top1 - float_top1,
            "int8_top1": accuracy(int8_logits, labels, offset).top1,
            "agreement": top1_agreement(float_logits, int8_logits),
            "calibration_s": round(seconds, 1),
            "float_conv_left": ops.get("Conv", 0), "qlinearconv": ops.get("QLinearConv", 0),
            "float_min": sum(n.op_type == "Min" for n in int8_model.graph.node
                             if not any(i.endswith(".input_quantized") for i in n.input)),
            "uint8_min": sum(n.op_type == "Min" and any(i.endswith(".input_quantized") for i in n.input)
                             for n in int8_model.graph.node),
        })
        timed[name] = int8_model
        if state.plan is not None and state.plan.integer_min:
            timed[f"{name} (float Min layout)"] = float_min_layout(state, args.weights == "per-channel")
        print(f"{name}: agreement {rows[-1]['agreement']:.3f}", flush=True)
    if args.speed_rounds:
        speeds = throughputs(timed, evaluation, args.speed_rounds)
        for row in rows:
            row["img_per_s"] = speeds[row["combination"]]
            row["img_per_s_float_min_layout"] = speeds.get(f"{row['combination']} (float Min layout)")
            row["speed_vs_plain"] = speeds[row["combination"]] / speeds["plain"] if "plain" in speeds else None
            row["float_img_per_s"] = speeds["float"]
    print(pd.DataFrame(rows).drop(columns=["workload", "weights"]).to_string(index=False))
    previous = json.loads(OUTPUT.read_text()).get("rows", []) if OUTPUT.is_file() else []
    write_json(OUTPUT, {"note": "benchmarks/cle_modes.py on the 1000 shared images (calibrated on the 500 "
                                "even-position ones); throughput: batch 32, round-robin medians in one process",
                        "rows": merged_rows(previous, rows, args.workload, args.weights)})


if __name__ == "__main__":
    sys.exit(run_main(main))
