"""The QNN HTP backend: ONNX Runtime sessions on Qualcomm's HTP through the onnxruntime-qnn plugin provider.

Every session is created with ``session.disable_cpu_ep_fallback=1``. With fallback on, a node QNN rejects runs
on ONNX Runtime's CPU kernels without a word (a dynamic batch sends the whole graph there), and
``get_providers()`` still lists QNN: figures from such a session would be CPU figures. With fallback off, session
creation fails instead; ONNX Runtime's message does not name the node, so the session is created once more with
verbose logging captured from file descriptor 2, and the rejected nodes (name, op type, QNN's reason) are read
from that log into one error.

On x86 the plugin's libQnnHtp.so is an emulator of the HTP: it computes as the HTP does, but its speed is not a
device's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import onnxruntime as ort

from harness.loadgen.backend import BackendError
from workload.config import HarnessConfig, QnnConfig

log = logging.getLogger(__name__)

PROVIDER = "QNNExecutionProvider"
INSTALL_HINT = ("the qnn-htp backend needs the optional extra: pip install -e '.[qnn]' "
                "(make does this with BACKEND=qnn-htp)")
EMULATOR_NOTE = "QNN HTP x86 emulator (onnxruntime-qnn): latency is the emulator's on this CPU, not a device's"

_registered = False


def _plugin() -> ModuleType:
    """``onnxruntime_qnn``, registered with ONNX Runtime once per process."""
    global _registered
    try:
        import onnxruntime_qnn
    except ImportError as err:
        raise BackendError(INSTALL_HINT) from err
    if not _registered:
        try:
            ort.register_execution_provider_library(PROVIDER, onnxruntime_qnn.get_library_path())
        except Exception as err:  # ORT raises its own Fail type
            if "already registered" not in str(err):
                raise BackendError(f"the QNN provider library does not load ({err}); {INSTALL_HINT}") from err
        _registered = True
    if not Path(onnxruntime_qnn.get_qnn_htp_path()).is_file():
        raise BackendError(f"{onnxruntime_qnn.get_qnn_htp_path()}: QNN HTP backend library missing; {INSTALL_HINT}")
    return onnxruntime_qnn


def provider_options(cfg: QnnConfig) -> dict[str, str]:
    """QNN's provider options from the workload (the HTP backend library, architecture, SoC, performance mode)."""
    options = {"backend_path": _plugin().get_qnn_htp_path(), "htp_performance_mode": cfg.performance_mode}
    if cfg.htp_arch:
        options["htp_arch"] = str(cfg.htp_arch)
    if cfg.soc_model:
        options["soc_model"] = str(cfg.soc_model)
    return options


def session_options(cfg: QnnConfig, config_entries: dict[str, str], log_level: int = 4) -> ort.SessionOptions:
    """Fallback disabled; ``log_level`` 4 (fatal only) keeps a failure to our one error line, 0 is verbose."""
    _plugin()
    options = ort.SessionOptions()
    options.log_severity_level = log_level
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    for key, value in config_entries.items():
        options.add_session_config_entry(key, value)
    devices = [d for d in ort.get_ep_devices() if d.ep_name == PROVIDER]
    if not devices:
        raise BackendError(f"{PROVIDER} is registered but offers no device; {INSTALL_HINT}")
    options.add_provider_for_devices(devices, provider_options(cfg))
    return options


@dataclass(frozen=True)
class RejectedNode:
    name: str
    op_type: str
    reason: str


_UNIT = re.compile(r"Validation FAILED for \d+ nodes in OrtNodeUnit \((\w+)\) :\n((?:\t.*\n)+)")
_NODE = re.compile(r"Operator type: (\w+) Node name: (\S*)")
_UNSUPPORTED = re.compile(r"name: ([^,\s]*), type: (\w+)")
_QDQ = ("QuantizeLinear", "DequantizeLinear")


def rejected_nodes(log_text: str) -> list[RejectedNode]:
    """The nodes QNN's verbose log says it did not take; a node unit's Q/DQ members are named only when the unit
    is itself a Q or DQ (they are rejected because their compute node is)."""
    found: dict[tuple[str, str], RejectedNode] = {}
    for unit in _UNIT.finditer(log_text):
        reason = "; ".join(re.findall(r"REASON : (.*)", unit.group(2))) or "failed QNN's validation"
        for op_type, name in _NODE.findall(unit.group(2)):
            if op_type not in _QDQ or unit.group(1) in _QDQ:
                found.setdefault((name, op_type), RejectedNode(name, op_type, reason.strip().rstrip(".")))
    for block in re.findall(r"Unsupported nodes in QNN EP: \{(.*?)\}", log_text, re.S):
        for name, op_type in _UNSUPPORTED.findall(block):
            found.setdefault((name, op_type), RejectedNode(name, op_type, "unsupported by the QNN EP"))
    return list(found.values())


@contextlib.contextmanager
def _captured_stderr() -> Iterator[tempfile.SpooledTemporaryFile]:
    """The C++ log goes to file descriptor 2, not to ``sys.stderr``: redirect the descriptor itself."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield sink
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _explain(model: str | bytes, cfg: QnnConfig, config_entries: dict[str, str], err: Exception, what: str) -> str:
    """Re-create the failed session verbosely and name the rejected nodes."""
    with _captured_stderr() as sink:
        with contextlib.suppress(Exception):  # the failure being explained
            ort.InferenceSession(model, sess_options=session_options(cfg, config_entries, log_level=0))
        sink.seek(0)
        text = sink.read().decode("utf-8", "replace")
    nodes = rejected_nodes(text)
    if not nodes:
        setup = re.findall(r"QNN SetupBackend failed (.*?)(?:\x1b|\n)", text)
        return f"{what}: the QNN HTP session could not be created: {setup[0] if setup else err}"
    listed = "; ".join(f"'{n.name}' ({n.op_type}): {n.reason}" for n in nodes[:5])
    more = f" and {len(nodes) - 5} more" if len(nodes) > 5 else ""
    return (f"{what}: QNN HTP does not take {len(nodes)} node(s), and CPU fallback is disabled: {listed}{more}. "
            "Run the HTP form (model.int8.qnn.onnx: static batch, quantized outputs)")


def htp_session(model: Path | bytes, cfg: QnnConfig, config_entries: dict[str, str] | None = None
                ) -> ort.InferenceSession:
    """A session whose every node runs on the HTP, or a ``BackendError`` naming the nodes that do not."""
    entries = dict(config_entries or {})
    source = str(model) if isinstance(model, Path) else model
    what = str(model) if isinstance(model, Path) else "model"
    if isinstance(model, Path) and not model.is_file():
        raise BackendError(f"{model}: model file not found (run `make calibrate BACKEND=qnn-htp` first)")
    try:
        return ort.InferenceSession(source, sess_options=session_options(cfg, entries))
    except BackendError:
        raise
    except Exception as err:  # ORT's Fail: the nodes are named only in the verbose log
        context = entries.get("ep.context_file_path")
        if context:
            Path(context).unlink(missing_ok=True)  # a failed export can leave a partial (hybrid) context model
        raise BackendError(_explain(source, cfg, entries, err, what)) from err


def export_context(model: Path, context_path: Path, cfg: QnnConfig) -> ort.InferenceSession:
    """Compile ``model`` for the HTP and write the EPContext model (the QNN context binary embedded), atomically.

    Returns the exporting session, whose outputs the context model reproduces.
    """
    partial = context_path.with_name(f".partial-{os.getpid()}-{context_path.name}")
    partial.unlink(missing_ok=True)  # ORT refuses to overwrite
    entries = {"ep.context_enable": "1", "ep.context_embed_mode": "1", "ep.context_file_path": str(partial)}
    try:
        session = htp_session(model, cfg, entries)
        if not partial.is_file():
            raise BackendError(f"{model}: QNN wrote no context model to {partial}")
        os.replace(partial, context_path)
    finally:
        partial.unlink(missing_ok=True)
    return session


class QnnHtpBackend:
    """The ``Backend`` protocol on the HTP. The model's batch is static: a larger batch runs as several calls."""

    def __init__(self, model_path: Path, cfg: HarnessConfig, output_name: str | None = None) -> None:
        self.session = htp_session(model_path, cfg.qnn)
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        if output_name is not None and output_name not in outputs:
            raise BackendError(f"{model_path}: no output '{output_name}' (outputs: {', '.join(outputs)})")
        self.output_name = output_name or outputs[0]
        batch = self.session.get_inputs()[0].shape[0]
        if not isinstance(batch, int):
            raise BackendError(f"{model_path}: the HTP needs a static batch, the input's is '{batch}'")
        self.batch = batch
        log.info("loaded %s on the %s", model_path, EMULATOR_NOTE)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) % self.batch:
            raise BackendError(f"a batch of {len(batch)} does not split into the model's static batch {self.batch}")
        parts = [self.session.run([self.output_name], {self.input_name: batch[i:i + self.batch]})[0]
                 for i in range(0, len(batch), self.batch)]
        return np.concatenate(parts)
