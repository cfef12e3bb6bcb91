"""ONNX Runtime's ``quantize_static`` as a peer: fp32 ONNX + calibration tensors -> QDQ int8 ONNX.

Settings are what an ORT user picks for CNNs on CPU: QDQ format, QUInt8 activations, QInt8 weights
(per-channel or per-tensor), and one of ORT's calibration methods (MinMax, Entropy, Percentile) with
its default options.

Before quantizing, the model goes through ``onnxruntime.quantization.shape_inference.quant_pre_process``,
the step ORT's quantization guide recommends (``python -m onnxruntime.quantization.preprocess``): ORT's
basic graph optimizations (which fold BatchNormalization into the preceding Conv) and ONNX shape
inference. Its symbolic shape inference is skipped: it serves models with symbolic dimensions beyond the
batch (transformers), needs sympy, and ONNX shape inference already types every tensor of these CNNs.
Its time counts as part of the tool's time.

By default ORT keeps every intermediate output of every calibration batch in memory before it computes
ranges; for Entropy and Percentile on 500 MobileNetV2 images that passed 19 GB and was killed on a 24 GiB
machine. ``--stride-batches N`` sets ORT's own ``CalibStridedMinMax`` option: quantize_static then
collects N batches at a time and merges each chunk into its running min/max or histograms.

Run as a child process so its time and memory can be measured:
    python benchmarks/peers/ort_static.py FP32.onnx CALIBRATION.npy OUT.int8.onnx --method MinMax --per-channel
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

METHODS = {"MinMax": CalibrationMethod.MinMax, "Entropy": CalibrationMethod.Entropy,
           "Percentile": CalibrationMethod.Percentile}


class ArrayReader(CalibrationDataReader):
    """Feeds (N, C, H, W) calibration tensors to ORT in batches; ``set_range`` selects batches (for striding)."""

    def __init__(self, input_name: str, images: np.ndarray, batch_size: int) -> None:
        self._input_name = input_name
        self._images = images
        self._batch_size = batch_size
        self.set_range(0, len(self))

    def __len__(self) -> int:
        return math.ceil(len(self._images) / self._batch_size)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._pending = iter(range(start_index, end_index))

    def get_next(self) -> dict[str, np.ndarray] | None:
        index = next(self._pending, None)
        if index is None:
            return None
        start = index * self._batch_size
        return {self._input_name: np.ascontiguousarray(self._images[start : start + self._batch_size])}


def quantize_ort_static(fp32_path: Path, images: np.ndarray, output_path: Path, method: str, per_channel: bool,
                        batch_size: int = 16, stride_batches: int | None = None) -> Path:
    """Pre-process (BN folding, shape inference) then ``quantize_static``; returns ``output_path``."""
    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_path.parent) as tmp:
        prepared = Path(tmp) / "model.preprocessed.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        staged = Path(tmp) / output_path.name
        quantize_static(
            str(prepared), str(staged), ArrayReader(input_name, images, batch_size),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            per_channel=per_channel, calibrate_method=METHODS[method],
            extra_options={} if stride_batches is None else {"CalibStridedMinMax": stride_batches},
        )
        staged.replace(output_path)
    return output_path


def main() -> int:
    parser = argparse.ArgumentParser(description="ONNX Runtime quantize_static (QDQ, u8 activations, s8 weights)")
    parser.add_argument("fp32", type=Path, help="float ONNX model")
    parser.add_argument("calibration", type=Path, help=".npy of preprocessed (N, C, H, W) float32 tensors")
    parser.add_argument("output", type=Path, help="where to write the int8 QDQ model")
    parser.add_argument("--method", choices=sorted(METHODS), default="MinMax")
    parser.add_argument("--per-channel", action="store_true", help="per-channel weights (default per-tensor)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--stride-batches", type=int,
                        help="ORT's CalibStridedMinMax: collect this many batches at a time (must divide the count)")
    args = parser.parse_args()
    images = np.load(args.calibration, mmap_mode="r")
    quantize_ort_static(args.fp32, images, args.output, args.method, args.per_channel, args.batch_size,
                        args.stride_batches)
    return 0


if __name__ == "__main__":
    sys.exit(main())
