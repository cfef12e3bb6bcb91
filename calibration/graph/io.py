"""Loading and saving ONNX models; saves are atomic."""

from __future__ import annotations

from pathlib import Path

import onnx

from workload.errors import CalibrationError
from workload.files import write_atomic


def load_model(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise CalibrationError(f"{path}: model file not found")
    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf raises assorted types on corrupt input
        raise CalibrationError(f"{path}: not a valid ONNX model ({type(err).__name__})") from err
    if not model.graph.node:  # an empty file parses as an empty ModelProto
        raise CalibrationError(f"{path}: not a valid ONNX model (no graph: {path.stat().st_size} bytes)")
    return model


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Write to a temporary file, then rename, so an interrupted write never looks complete."""
    write_atomic(path, model.SerializeToString())
