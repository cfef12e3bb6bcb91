"""AIMET (``aimet-onnx==2.42.0``) as a peer: CLE, then QuantSim, exported as an ONNX QDQ model that ORT runs.

Run by ``.venv-aimet``'s Python (``bash benchmarks/peers/setup.sh aimet``), never the project's:
    .venv-aimet/bin/python benchmarks/peers/aimet_quantize.py FP32.onnx CALIBRATION.npy OUT.int8.onnx

Steps, each AIMET's own API with its defaults unless stated:
1. ``equalize_model``: batch-norm folding, ReLU6 -> ReLU replacement, cross-layer scaling, high-bias fold
   (in place, on the float model with its BatchNormalization nodes);
2. ``QuantizationSimModel`` with 8-bit weights and activations and the default quantsim config
   (per-tensor symmetric weights, asymmetric activations, min-max scheme);
3. ``compute_encodings`` on the calibration tensors;
4. ``to_onnx_qdq(export_int32_bias=True, prequantize_constants=True)``: uint8 activations, int8 weights and
   int32 biases, the form ORT fuses into QLinearConv.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from aimet_onnx.cross_layer_equalization import equalize_model
from aimet_onnx.quantsim import QuantizationSimModel


def batches(input_name: str, images: np.ndarray, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    for start in range(0, len(images), batch_size):
        yield {input_name: np.ascontiguousarray(images[start : start + batch_size])}


def main() -> int:
    parser = argparse.ArgumentParser(description="AIMET CLE + QuantSim (8-bit, per-tensor weights) to ONNX QDQ")
    parser.add_argument("fp32", type=Path, help="float ONNX model (BatchNormalization kept)")
    parser.add_argument("calibration", type=Path, help=".npy of preprocessed (N, C, H, W) float32 tensors")
    parser.add_argument("output", type=Path, help="where to write the int8 QDQ model")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    model = onnx.load(str(args.fp32))
    input_name = model.graph.input[0].name
    images = np.load(args.calibration, mmap_mode="r")
    equalize_model(model)
    sim = QuantizationSimModel(model, param_type="int8", activation_type="int8",
                               providers=["CPUExecutionProvider"])
    sim.compute_encodings(list(batches(input_name, images, args.batch_size)))
    qdq = sim.to_onnx_qdq(export_int32_bias=True, prequantize_constants=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    staged = args.output.with_name(f".{args.output.name}.{os.getpid()}.tmp")
    onnx.save(qdq, str(staged))
    staged.replace(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
