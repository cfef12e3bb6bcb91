"""The project's own calibration, run the way each peer is run: fp32 ONNX + calibration tensors -> int8 ONNX.

Only the calibration itself (the workload's technique steps, then the QDQ writer) runs here, so that its
time and memory compare with a peer's quantizer on the same input; evaluation happens elsewhere.
From the repository root:
    python -m benchmarks.peers.ours_quantize FP32.onnx CALIBRATION.npy OUT.int8.onnx \
        --workload mobilenetv2 --range mean_minmax --weights per-channel
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from calibration.graph.io import load_model, save_model
from calibration.quantize import quantize
from workload.config import RANGE_METHODS, WEIGHT_GRANULARITIES, load_workload, with_overrides
from workload.files import write_json

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    parser = argparse.ArgumentParser(description="the project's calibration (technique steps + QDQ writer)")
    parser.add_argument("fp32", type=Path, help="float ONNX model (BatchNormalization kept)")
    parser.add_argument("calibration", type=Path, help=".npy of preprocessed (N, C, H, W) float32 tensors")
    parser.add_argument("output", type=Path, help="where to write the int8 QDQ model")
    parser.add_argument("--workload", required=True, help="workload name, for its calibration settings")
    parser.add_argument("--range", choices=RANGE_METHODS)
    parser.add_argument("--weights", choices=WEIGHT_GRANULARITIES)
    parser.add_argument("--techniques", help="comma-separated technique list overriding the YAML")
    parser.add_argument("--report", type=Path, help="where to write the steps' times and the search's scores (JSON)")
    args = parser.parse_args()
    config = with_overrides(load_workload(ROOT / "workloads" / f"{args.workload}.yaml"), args.weights, args.range,
                            args.techniques)
    images = np.load(args.calibration, mmap_mode="r")
    result = quantize(load_model(args.fp32), config, images, show_progress=False)
    save_model(result.model, args.output)
    if args.report is not None:
        write_json(args.report, {key: result.state.report[key] for key in ("steps", "technique_search")
                                 if key in result.state.report})
    return 0


if __name__ == "__main__":
    sys.exit(main())
