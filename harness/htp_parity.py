"""Simulation versus target: every quantized tensor of the int8 model on ONNX Runtime's CPU kernels and on the HTP.

The HTP form's uint8 QuantizeLinear outputs become extra graph outputs (the HTP still takes the graph whole, at
no measurable cost), so both backends hand back the very integers they computed. Each is dequantized with its
encoding and compared with a float reference: the same model with every activation Q→DQ pair removed (float
activations, the same int8 weights). A tensor whose HTP SQNR falls below its CPU SQNR is where the HTP's fixed-point
requantization departs from ONNX Runtime's float-scale kernels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use("Agg")
import numpy as np
import onnx
from onnx import helper, numpy_helper

from calibration.evaluate import sqnr_db
from calibration.graph.session import make_session
from harness.loadgen.qnn import htp_session
from workload.config import QnnConfig
from workload.files import save_figure


@dataclass(frozen=True)
class QuantizedTensor:
    tensor: str  # the float tensor's name
    quantized: str  # its QuantizeLinear output
    scale: float
    zero_point: int


@dataclass(frozen=True)
class TensorParity:
    tensor: str
    sqnr_cpu_db: float  # CPU int8 against the float reference
    sqnr_htp_db: float  # HTP int8 against the float reference
    differ_pct: float  # share of elements whose integer differs between CPU and HTP
    max_lsb: int  # the largest integer difference


def quantized_tensors(model: onnx.ModelProto) -> list[QuantizedTensor]:
    """The activation QuantizeLinear nodes (per-tensor, on non-constant inputs) in graph order."""
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in constants and node.input[1] in constants:
            scale, zero = constants[node.input[1]], constants[node.input[2]]
            if scale.size == 1:
                found.append(QuantizedTensor(node.input[0], node.output[0], float(scale), int(zero)))
    return found


def _with_outputs(model: onnx.ModelProto, names: list[str], elem_types: list[int]) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.extend(helper.make_tensor_value_info(n, t, None) for n, t in zip(names, elem_types))
    return copy


def float_reference(model: onnx.ModelProto, tensors: list[QuantizedTensor]) -> tuple[onnx.ModelProto, list[str]]:
    """``model`` with each activation's Q→DQ replaced by float: an Identity, or a Relu where the encoding starts at
    0, since the QDQ writer folds a Relu or Clip(0, c) into the uint8 clamp of its producer's output. The outputs
    are the float tensors (after that Relu), one name per tensor, returned with the model."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    by_quantized = {t.quantized: t for t in tensors}
    reference = {t.tensor: t.tensor for t in tensors}  # a tensor without a DQ (the integer Min's input) stays as is
    for i, node in enumerate(copy.graph.node):
        if node.op_type == "DequantizeLinear" and node.input[0] in by_quantized:
            t = by_quantized[node.input[0]]
            op = "Relu" if t.zero_point == 0 else "Identity"
            copy.graph.node[i].CopyFrom(helper.make_node(op, [t.tensor], list(node.output), name=node.name))
            reference[t.tensor] = node.output[0]
    names = [reference[t.tensor] for t in tensors]
    existing = {o.name for o in copy.graph.output}
    extra = [n for n in dict.fromkeys(names) if n not in existing]
    return _with_outputs(copy, extra, [onnx.TensorProto.FLOAT] * len(extra)), names


def measure_parity(htp_model: Path, cfg: QnnConfig, images: np.ndarray) -> list[TensorParity]:
    """Per quantized tensor of the HTP form, CPU and HTP against float on ``images`` (one at a time)."""
    model = onnx.load(str(htp_model))
    tensors = quantized_tensors(model)
    names = [t.quantized for t in tensors]
    zero_types = {i.name: i.data_type for i in model.graph.initializer}
    types = [zero_types[n.input[2]] for n in model.graph.node if n.output and n.output[0] in set(names)]
    probed = _with_outputs(model, names, types).SerializeToString()
    htp = htp_session(probed, cfg)
    cpu = make_session(onnx.load_from_string(probed), optimize=True)
    reference_model, reference_names = float_reference(model, tensors)
    reference = make_session(reference_model)
    feed = htp.get_inputs()[0].name
    per_tensor: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [[] for _ in tensors]
    for image in images:
        x = {feed: np.ascontiguousarray(image[None])}
        for k, (h, c, f) in enumerate(zip(htp.run(names, x), cpu.run(names, x),
                                          reference.run(reference_names, x))):
            per_tensor[k].append((h, c, f))
    rows = []
    for t, values in zip(tensors, per_tensor):
        h, c, f = (np.concatenate([v[i].ravel() for v in values]) for i in range(3))
        diff = np.abs(h.astype(np.int64) - c.astype(np.int64))
        rows.append(TensorParity(t.tensor, sqnr_db(f, _real(c, t)), sqnr_db(f, _real(h, t)),
                                 100.0 * float(np.mean(diff > 0)), int(diff.max())))
    return rows


def _real(q: np.ndarray, t: QuantizedTensor) -> np.ndarray:
    return (q.astype(np.float64) - t.zero_point) * t.scale


def format_parity(rows: list[TensorParity], top: int = 10) -> list[str]:
    """A table of the ``top`` tensors where the HTP falls furthest below the CPU int8 model."""
    worst = sorted(rows, key=lambda r: r.sqnr_htp_db - r.sqnr_cpu_db)[:top]
    lines = [f"  {'tensor':<44} {'CPU dB':>7} {'HTP dB':>7} {'HTP-CPU':>8} {'differ %':>9} {'max LSB':>8}"]
    lines += [f"  {r.tensor[:44]:<44} {r.sqnr_cpu_db:7.1f} {r.sqnr_htp_db:7.1f} {r.sqnr_htp_db - r.sqnr_cpu_db:8.2f} "
              f"{r.differ_pct:9.2f} {r.max_lsb:8d}" for r in worst]
    return lines


def plot_parity(rows: list[TensorParity], path: Path, title: str) -> None:
    """SQNR against float per tensor (graph order) for CPU and HTP, and the share of differing integers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    index = np.arange(len(rows))
    top.plot(index, [r.sqnr_cpu_db for r in rows], "o-", ms=3, label="ONNX Runtime CPU int8")
    top.plot(index, [r.sqnr_htp_db for r in rows], "s-", ms=3, label="QNN HTP (x86 emulator)")
    top.set_ylabel("SQNR vs float (dB)")
    top.set_title(title)
    top.legend()
    bottom.bar(index, [r.differ_pct for r in rows], color="tab:red")
    bottom.set_ylabel("integers differing (%)")
    bottom.set_xlabel("quantized tensor (graph order)")
    fig.tight_layout()
    save_figure(fig, path)


def parity_report(rows: list[TensorParity]) -> list[dict]:
    return [asdict(r) for r in rows]
