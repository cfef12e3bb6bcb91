"""``make calibrate BACKEND=qnn-htp``: the HTP form, its EPContext model, HTP accuracy and CPU/HTP parity.

Runs inside the calibrate command (as one of its target evaluations), after the CPU int8 model and encodings.json
are written: the HTP form is built from those two files, so both models carry the same encodings. Its files are
staged in the calibration's result set and published with the report after every HTP figure was measured, so a
failure or Ctrl-C leaves none of them. Every figure in the ``htp`` report section is from the QNN HTP x86 emulator.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from calibration.evaluate import accuracy, sqnr_db, top1_agreement
from calibration.graph.io import load_model, save_model
from calibration.pipeline import Evaluated
from calibration.quant.aimet import read_aimet_encodings
from calibration.quant.htp import htp_form
from harness.htp_parity import TensorParity, format_parity, measure_parity, parity_report, plot_parity
from harness.loadgen.backend import BackendError
from harness.loadgen.qnn import EMULATOR_NOTE, export_context, htp_session
from workload.config import QnnConfig

log = logging.getLogger(__name__)

QNN_MODEL = "model.int8.qnn.onnx"
CONTEXT_MODEL = "model.int8.qnn_ctx.onnx"
PARITY_IMAGES = 4  # per-tensor parity: the emulator takes about a second an image


@dataclass
class HtpEvaluation:
    """What the HTP evaluation measured (filled in by ``HtpTarget``), for the command line's summary."""

    images: int = 0
    figures: dict[str, float] = field(default_factory=dict)
    parity: list[TensorParity] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def run_on(session: ort.InferenceSession, images: np.ndarray, show_progress: bool, what: str) -> np.ndarray:
    feed = session.get_inputs()[0].name
    batch = session.get_inputs()[0].shape[0]
    outputs = []
    for start in tqdm(range(0, len(images), batch), desc=what, unit="batch" if batch > 1 else "img",
                      disable=not show_progress):
        outputs.append(session.run(None, {feed: np.ascontiguousarray(images[start:start + batch])})[0])
    return np.concatenate(outputs)


def check_context(context: Path, exporting: ort.InferenceSession, cfg: QnnConfig, image: np.ndarray) -> None:
    """The context model must reproduce its exporting session bit for bit."""
    reloaded = htp_session(context, cfg)
    feed = exporting.get_inputs()[0].name
    expected, got = (s.run(None, {feed: image})[0] for s in (exporting, reloaded))
    if not np.array_equal(expected, got):
        raise BackendError(f"{context}: the context model's outputs differ from its exporting session's "
                           f"(max |diff| {np.abs(expected - got).max():.3g})")


@dataclass
class HtpTarget:
    """The calibrate command's evaluation on the HTP; ``eval_limit`` takes the first N evaluation images."""

    cfg: QnnConfig
    eval_limit: int | None = None
    show_progress: bool = True
    result: HtpEvaluation = field(default_factory=HtpEvaluation)

    def __call__(self, run: Evaluated) -> dict[str, Any]:
        activations, _ = read_aimet_encodings(run.encodings)
        qnn_path, context_path = run.stage(QNN_MODEL), run.stage(CONTEXT_MODEL)  # published with the calibration
        save_model(htp_form(load_model(run.int8_model), activations, self.cfg.batch), qnn_path)
        session = export_context(qnn_path, context_path, self.cfg)
        count = len(run.images) if self.eval_limit is None else min(self.eval_limit, len(run.images))
        images = run.images[:count]
        check_context(context_path, session, self.cfg, np.ascontiguousarray(images[:self.cfg.batch]))
        htp_logits = run_on(session, images, self.show_progress, "HTP int8 (emulator)")
        parity = measure_parity(qnn_path, self.cfg, images[:PARITY_IMAGES])
        plot_parity(parity, run.stage("plots/htp_parity.png"),
                    f"{run.out.name}: each quantized tensor, ONNX Runtime CPU int8 vs QNN HTP int8 (x86 "
                    f"emulator), {min(PARITY_IMAGES, count)} images")
        return {"htp": self._section(run, count, htp_logits, parity, [qnn_path, context_path])}

    def _section(self, run: Evaluated, count: int, htp_logits: np.ndarray, parity: list[TensorParity],
                 files: list[Path]) -> dict[str, Any]:
        labels = run.labels[:count]
        float_logits, cpu_logits = run.float_logits[:count], run.int8_logits[:count]
        figures = {
            "float_top1": accuracy(float_logits, labels, run.label_offset).top1,
            "cpu_int8_top1": accuracy(cpu_logits, labels, run.label_offset).top1,
            "htp_int8_top1": accuracy(htp_logits, labels, run.label_offset).top1,
            "cpu_int8_agreement": top1_agreement(float_logits, cpu_logits),
            "htp_int8_agreement": top1_agreement(float_logits, htp_logits),
            "htp_cpu_agreement": top1_agreement(cpu_logits, htp_logits),
            "cpu_int8_sqnr_db": sqnr_db(float_logits, cpu_logits),
            "htp_int8_sqnr_db": sqnr_db(float_logits, htp_logits),
        }
        self.result = HtpEvaluation(count, figures, parity, files)
        return {
            "backend": "qnn-htp", "note": EMULATOR_NOTE, "qnn": dataclasses.asdict(self.cfg), "images": count,
            "eval_limit": self.eval_limit,
            "which_on_htp": ["htp_int8_top1", "htp_int8_agreement", "htp_cpu_agreement", "htp_int8_sqnr_db",
                             "parity.sqnr_htp_db"],
            "figures": figures, "models": [f.name for f in files],
            "parity_images": min(PARITY_IMAGES, count), "parity": parity_report(parity),
        }


def format_htp(result: HtpEvaluation) -> str:
    f = result.figures
    lines = [
        f"  on the first {result.images} evaluation images; 'HTP' = {EMULATOR_NOTE}",
        f"  float     top-1 {100 * f['float_top1']:6.2f} %",
        f"  CPU int8  top-1 {100 * f['cpu_int8_top1']:6.2f} %   agreement with float "
        f"{100 * f['cpu_int8_agreement']:6.2f} %   logit SQNR {f['cpu_int8_sqnr_db']:5.1f} dB",
        f"  HTP int8  top-1 {100 * f['htp_int8_top1']:6.2f} %   agreement with float "
        f"{100 * f['htp_int8_agreement']:6.2f} %   logit SQNR {f['htp_int8_sqnr_db']:5.1f} dB   "
        f"agreement with CPU int8 {100 * f['htp_cpu_agreement']:6.2f} %",
        f"  per-tensor parity on {min(PARITY_IMAGES, result.images)} images, the 10 tensors where the HTP falls "
        "furthest below the CPU (SQNR against float activations):",
        *format_parity(result.parity),
        f"  wrote {', '.join(p.name for p in result.files)}, plots/htp_parity.png",
    ]
    return "\n".join(lines)
