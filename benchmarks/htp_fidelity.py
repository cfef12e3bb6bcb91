"""Fidelity on Qualcomm's HTP (onnxruntime-qnn's x86 emulator) against ONNX Runtime's CPU kernels, in one run.

For MobileNetV2 and EfficientNet-Lite0, per-channel and per-tensor weights:
- ours: the workload's default technique list, written as the HTP form from encodings.json;
- the peer: ONNX Runtime's ``quantize_static`` made QNN-ready by its ``get_qnn_qdq_config`` (MinMax, uint8
  activations, int8 symmetric weights as ours), on the float model BN-folded and shape-inferred by
  ``quant_pre_process`` and fixed to batch 1 (with BatchNormalization left in, ORT's QNN-config model ran whole on
  the HTP but far from its CPU twin: results/experiments/htp.md).

Each model runs on the HTP with CPU fallback disabled (a model that the HTP does not take whole is recorded as
such, with QNN's reason) and on the CPU provider, on the first ``--images`` evaluation images. Agreement with
float on both, and their gap, go to the table and ``results/benchmarks/htp_fidelity.json``. The emulator's
speed is not a device's: no time here is a performance figure.

    python -m benchmarks.htp_fidelity [--images 200] [--workloads mobilenetv2,efficientnet-lite0]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from benchmarks.common import fidelity, load_workload_inputs, run_main
from benchmarks.peers.ort_static import ArrayReader
from calibration.graph.io import save_model
from calibration.graph.session import make_session, run_batches
from calibration.quant.aimet import export_aimet_encodings, read_aimet_encodings
from calibration.quant.htp import htp_form
from calibration.quantize import quantize
from harness.loadgen.backend import BackendError
from harness.loadgen.qnn import EMULATOR_NOTE, htp_session
from workload.config import QnnConfig, with_overrides
from workload.files import write_json

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "benchmarks" / "htp_fidelity.json"
TOOLS = ("ours (default list)", "ORT quantize_static, QNN config")


def ours(data, weights: str, work: Path) -> Path:
    """The default list's int8 model in its HTP form, written from the encodings file as the calibrate command does."""
    config = with_overrides(data.config, weights=weights)
    result = quantize(data.float_model, config, data.calibration, show_progress=False)
    encodings = work / "encodings.json"
    export_aimet_encodings({**result.state.activations, **result.state.outputs}, result.params, encodings)
    activations, _ = read_aimet_encodings(encodings)
    path = work / "ours.qnn.onnx"
    save_model(htp_form(result.model, activations), path)
    return path


def peer(data, per_channel: bool, work: Path) -> Path:
    """ORT's quantize_static with its QNN configuration, on the BN-folded, pre-processed float model at batch 1."""
    from onnxruntime.quantization import QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32, prepared = work / "model.fp32.onnx", work / "model.prepared.onnx"
    model = onnx.ModelProto()
    model.CopyFrom(data.float_model)
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    save_model(model, fp32)
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    reader = ArrayReader(model.graph.input[0].name, data.calibration, 1)
    qnn_config = get_qnn_qdq_config(str(prepared), reader, activation_type=QuantType.QUInt8,
                                    weight_type=QuantType.QInt8, per_channel=per_channel)
    path = work / "peer.qnn.onnx"
    quantize(str(prepared), str(path), qnn_config)
    return path


def on_htp(path: Path, images: np.ndarray, what: str) -> np.ndarray:
    session = htp_session(path, QnnConfig())
    feed = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {feed: np.ascontiguousarray(x[None])})[0]
                           for x in tqdm(images, desc=f"HTP {what}", unit="img")])


def measure(data, tool: str, weights: str, path: Path, images: np.ndarray, labels: np.ndarray,
            float_logits: np.ndarray) -> dict:
    offset = data.config.model.label_offset
    session = make_session(onnx.load(str(path)), optimize=True)
    feed = session.get_inputs()[0].name
    cpu_logits = np.concatenate([session.run(None, {feed: np.ascontiguousarray(x[None])})[0] for x in images])
    cpu = fidelity(cpu_logits, labels, offset, float_logits)
    row = {"workload": data.config.name, "weights": weights, "tool": tool, "images": len(images),
           "cpu": cpu, "whole_on_htp": True}
    try:
        htp_logits = on_htp(path, images, f"{data.config.name} {weights} {tool}")
    except BackendError as err:
        row.update(whole_on_htp=False, htp_error=str(err))
        return row
    row["htp"] = fidelity(htp_logits, labels, offset, float_logits)
    row["htp_minus_cpu_agreement"] = row["htp"]["agreement"] - cpu["agreement"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="evaluation images on the HTP and the CPU")
    parser.add_argument("--workloads", default="mobilenetv2,efficientnet-lite0")
    parser.add_argument("--weights", default="per-channel,per-tensor")
    parser.add_argument("--held-out", action="store_true",
                        help="evaluate on the images never calibrated on, instead of the first ones")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    rows = []
    for name in args.workloads.split(","):
        data = load_workload_inputs(ROOT, name)
        chosen = np.arange(len(data.dataset.names))
        if args.held_out:
            chosen = chosen[~np.isin(data.dataset.names, data.dataset.calibration_names)]
        chosen = chosen[:args.images]
        images, labels = np.asarray(data.evaluation[chosen]), data.dataset.labels[chosen]
        float_logits = run_batches(make_session(data.float_model, optimize=True), images)
        for weights in args.weights.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                for tool in TOOLS:
                    path = ours(data, weights, Path(tmp)) if tool == TOOLS[0] else peer(
                        data, weights == "per-channel", Path(tmp))
                    rows.append(measure(data, tool, weights, path, images, labels, float_logits))
                    print_row(rows[-1])
    write_json(args.output, {"note": EMULATOR_NOTE, "images": args.images, "held_out": args.held_out,
                             "qnn": dataclasses.asdict(QnnConfig()), "rows": rows})
    print(f"wrote {args.output}")
    return 0


def print_row(row: dict) -> None:
    cpu = row["cpu"]["agreement"]
    htp = f"{100 * row['htp']['agreement']:6.1f} %" if row["whole_on_htp"] else "not whole: " + row["htp_error"][:80]
    print(f"{row['workload']:<18} {row['weights']:<12} {row['tool']:<32} agreement with float: "
          f"CPU {100 * cpu:6.1f} %, HTP {htp}", flush=True)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
