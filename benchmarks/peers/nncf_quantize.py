"""NNCF (``nncf==3.4.0``) as a peer: ``nncf.quantize`` on the ONNX model, fast or full bias correction.

Run by ``.venv-nncf``'s Python (``bash benchmarks/peers/setup.sh nncf``), never the project's:
    .venv-nncf/bin/python benchmarks/peers/nncf_quantize.py FP32.onnx CALIBRATION.npy OUT.int8.onnx \
        [--fast-bias-correction | --full-bias-correction]

NNCF's defaults otherwise (PERFORMANCE preset, per-channel symmetric int8 weights, its own activation
ranges), with ``subset_size`` set to the number of calibration tensors so that every one is used
(NNCF's default would take only 300). One sample per calibration step, as NNCF's examples feed it.

NNCF's ONNX backend leaves BatchNormalization nodes in float after the quantized Conv, which costs both
accuracy and fusion. So, as an ORT user would, the model first goes through ONNX Runtime's
``quant_pre_process`` (BN folded into Conv, shapes inferred; symbolic shape inference skipped, see
``ort_static.py``), timed as part of the tool.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import nncf
import numpy as np
import onnx
from onnxruntime.quantization.shape_inference import quant_pre_process


def main() -> int:
    parser = argparse.ArgumentParser(description="NNCF post-training quantization of an ONNX model")
    parser.add_argument("fp32", type=Path, help="float ONNX model")
    parser.add_argument("calibration", type=Path, help=".npy of preprocessed (N, C, H, W) float32 tensors")
    parser.add_argument("output", type=Path, help="where to write the int8 QDQ model")
    correction = parser.add_mutually_exclusive_group()
    correction.add_argument("--fast-bias-correction", dest="fast", action="store_true", default=True,
                            help="NNCF's default")
    correction.add_argument("--full-bias-correction", dest="fast", action="store_false",
                            help="fast_bias_correction=False")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folded = Path(tmp) / "model.folded.onnx"
        quant_pre_process(str(args.fp32), str(folded), skip_symbolic_shape=True)
        model = onnx.load(str(folded))
    input_name = model.graph.input[0].name
    images = np.load(args.calibration, mmap_mode="r")
    dataset = nncf.Dataset(range(len(images)), lambda i: {input_name: np.ascontiguousarray(images[i : i + 1])})
    quantized = nncf.quantize(model, dataset, subset_size=len(images), fast_bias_correction=args.fast)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    staged = args.output.with_name(f".{args.output.name}.{os.getpid()}.tmp")
    onnx.save(quantized, str(staged))
    staged.replace(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
