"""CPU inference sessions for calibration, and batched runs over image tensors.

Float sessions run with ORT's graph optimizations off, so that equivalence tests test our transforms rather than
ORT's fusions; int8 models are evaluated with every optimization on, as deployed.

Calibration sessions do not spin: ORT's worker threads otherwise busy-wait between operators, and with one other
CPU-bound process on the cores they lose far more than their share (results/experiments/gptq_speed.md).
Every session asks for ORT's exact int8 kernels (``EXACT_INT8``). On x86 without VNNI (AVX2, AVX-512F) the fast
uint8 × int8 kernel adds each pair of products with ``vpmaddubsw``, which saturates at the int16 limit: 255·127·2
overflows it, and the defaults' int8 models lost about 9 points of agreement on an AVX2-only CPU
(results/experiments/gptq_speed.md). With VNNI the option changes nothing.

Throughput measurements pass ``spinning=True``, which gives their best figure on a quiet machine; the LoadGen
sessions set their own options (harness/loadgen/backend.py).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

# Session config entry: x86 int8 GEMMs in exact (non-saturating) arithmetic where the fast kernel would saturate.
EXACT_INT8 = ("session.x64quantprecision", "1")


def make_session(model: onnx.ModelProto, optimize: bool = False, threads: int = 0, spinning: bool = False,
                 arena: bool = True) -> ort.InferenceSession:
    """A CPU session; ``optimize=False`` disables every ORT graph rewrite, ``spinning=False`` lets idle
    worker threads sleep instead of busy-waiting, ``arena=False`` frees each intermediate tensor instead of
    keeping ORT's memory arena at its high-water mark."""
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.add_session_config_entry(*EXACT_INT8)
    options.enable_cpu_mem_arena = arena
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_batches(session: ort.InferenceSession, images: np.ndarray, batch_size: int = 50) -> np.ndarray:
    """Run the session's first output over ``images`` in batches."""
    name = session.get_inputs()[0].name
    outputs = [
        session.run(None, {name: np.ascontiguousarray(images[i : i + batch_size])})[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(outputs)
