"""Where a workload's int8 error comes from, and how much less of it a target agreement would need.

On the 1000 shared images (calibrated on the 500 even-position ones), for the workload's technique
list (or ``--techniques``):
- int8: the deployed QDQ model (ORT_ENABLE_ALL, fused int8 kernels);
- weights only: the transformed float model with its int8 weights, activations float;
- activations only: the transformed float model with the uint8 activation QDQ pairs and float weights
  (the list without its weight-rounding steps, gptq and bias_correction, which write weights on the
  int8 grid or shift the biases for it; ORT graph rewrites off, so each pair runs as written);
- error × k: the float logits plus k times the int8 model's logit error, k from 1 down to 0.2. Such
  a model has the same error structure with less of it; the rows show the agreement each SQNR would
  buy, and the smallest SQNR gain that reaches ``--target``.

    IMAGENET_SAMPLES_DIR=../shared/data/imagenet-samples .venv/bin/python -m benchmarks.noise_budget \
        --workload mobilenetv2 --weights per-channel

What was measured beside it (mixed precision, per-channel residual-stream ranges, a float input, a
per-class logit shift, weight rounding's bound): results/experiments/noise_budget.md.

Prints a table and writes results/benchmarks/noise_budget.json (staged, then renamed), replacing the
rows of the same workload and weights and keeping the others.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import load_workload_inputs, merged_rows, run_main
from calibration.evaluate import sqnr_db, top1_agreement
from calibration.graph.session import make_session, run_batches
from calibration.quant.simulate import quantized_weights, with_activation_qdq, with_int8_weights
from calibration.steps.runner import run_steps, write_int8
from calibration.steps.state import StepContext
from workload.config import parse_technique
from workload.files import write_json

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "results" / "benchmarks" / "noise_budget.json"
WEIGHT_ROUNDING_STEPS = ("gptq", "bias_correction")
ERROR_SCALES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)


def scaled_error(reference: np.ndarray, candidate: np.ndarray, k: float) -> np.ndarray:
    """The reference logits plus ``k`` times the candidate's error."""
    return reference + k * (candidate - reference)


def figures(label: str, reference: np.ndarray, logits: np.ndarray) -> dict:
    return {"model": label, "agreement": top1_agreement(reference, logits),
            "agreement_held_out": top1_agreement(reference[1::2], logits[1::2]), "sqnr_db": sqnr_db(reference, logits)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", default="mobilenetv2")
    parser.add_argument("--weights", default="per-channel", choices=["per-tensor", "per-channel"])
    parser.add_argument("--techniques", default="", help="comma-separated steps (default: the workload's list)")
    parser.add_argument("--target", type=float, default=0.98, help="agreement to find the needed SQNR gain for")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    requested = tuple(parse_technique(t, "--techniques") for t in args.techniques.split(",") if t)
    data = load_workload_inputs(ROOT, args.workload)
    float_model, calibration, evaluation = data.float_model, data.calibration, data.evaluation
    steps = requested or data.config.calibration.techniques
    config = replace(data.config, calibration=replace(data.config.calibration, techniques=steps, weights=args.weights))
    per_channel = args.weights == "per-channel"
    reference = run_batches(make_session(float_model, optimize=True), evaluation)
    state = run_steps(float_model, StepContext(config, calibration, show_progress=True))
    int8_logits = run_batches(make_session(write_int8(state, per_channel)[0], optimize=True), evaluation)
    weights_only = with_int8_weights(state.model, quantized_weights(state.model, per_channel))
    unrounded = tuple(s for s in steps if s.name not in WEIGHT_ROUNDING_STEPS)
    float_weights = run_steps(float_model, StepContext(
        replace(config, calibration=replace(config.calibration, techniques=unrounded)), calibration, False))
    activations_only = with_activation_qdq(float_weights.model, float_weights.activations)
    rows = [figures("int8", reference, int8_logits),
            figures("weights only", reference, run_batches(make_session(weights_only, optimize=True), evaluation)),
            figures("activations only", reference,
                    run_batches(make_session(activations_only, optimize=False), evaluation))]
    rows += [figures(f"int8 error x {k:g}", reference, scaled_error(reference, int8_logits, k)) for k in ERROR_SCALES]
    reaching = [r for r in rows[3:] if r["agreement"] >= args.target]
    needed = max(0.0, reaching[0]["sqnr_db"] - rows[0]["sqnr_db"]) if reaching else None
    for row in rows:
        row.update(workload=args.workload, weights=args.weights)
    print(pd.DataFrame(rows).drop(columns=["workload", "weights"]).to_string(index=False, float_format="%.3f"))
    largest = -20 * np.log10(ERROR_SCALES[-1])
    gain = f"+{needed:.1f} dB" if needed is not None else f"more than +{largest:.0f} dB"
    print(f"{args.target:.1%} agreement needs {gain} SQNR with this error structure")
    summary = {"workload": args.workload, "weights": args.weights, "techniques": [str(s) for s in steps],
               "target": args.target, "needed_sqnr_gain_db": needed}
    previous = json.loads(OUTPUT.read_text()) if OUTPUT.is_file() else {}
    write_json(OUTPUT, {"note": "benchmarks/noise_budget.py on the 1000 shared images (calibrated on the 500 "
                                "even-position ones); agreement_held_out: the 500 odd-position images",
                        "summaries": merged_rows(previous.get("summaries", []), [summary], args.workload, args.weights),
                        "rows": merged_rows(previous.get("rows", []), rows, args.workload, args.weights)})


if __name__ == "__main__":
    sys.exit(run_main(main))
