"""Encodings in AIMET's layout (activation_encodings / param_encodings): the export, and the reader that lets
every model written after calibration (the QNN HTP form) take its encodings from ``encodings.json`` itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from calibration.quant.encodings import BITS, Encoding
from workload.errors import CalibrationError
from workload.files import write_json


def _aimet_entry(name: str, encoding: Encoding) -> dict:
    # AIMET's unsigned view: real = (q_u + offset)·scale with q_u in [0, 2^bw − 1].
    bits = BITS[encoding.dtype]
    offsets = np.atleast_1d(encoding.qmin - encoding.zero_point if not encoding.symmetric
                            else np.full(encoding.scale.shape, -(2 ** (bits - 1)), np.int64))
    return {
        "name": name,
        "bw": bits,
        "dtype": "INT",
        "enc_type": "PER_CHANNEL" if encoding.axis is not None else "PER_TENSOR",
        "is_sym": encoding.symmetric,
        "offset": [int(o) for o in offsets],
        "scale": [float(s) for s in np.atleast_1d(encoding.scale)],
    }


def export_aimet_encodings(activations: dict[str, Encoding], params: dict[str, Encoding], path: Path) -> None:
    """Write ``encodings.json`` in AIMET's 1.0.0 layout, atomically."""
    document = {
        "version": "1.0.0",
        "activation_encodings": [_aimet_entry(n, e) for n, e in activations.items()],
        "param_encodings": [_aimet_entry(n, e) for n, e in params.items()],
        "quantizer_args": {"activation_bitwidth": 8, "param_bitwidth": 8, "dtype": "int"},
    }
    write_json(path, document)


def _dtype(entry: dict, where: str) -> str:
    for dtype, bits in BITS.items():
        if bits == entry["bw"] and (dtype != "uint8") == bool(entry["is_sym"]):
            return dtype
    raise CalibrationError(f"{where}: no encoding dtype has {entry['bw']} bits with is_sym={entry['is_sym']}")


def _encoding(entry: dict, where: str) -> Encoding:
    dtype = _dtype(entry, where)
    per_channel = entry["enc_type"] == "PER_CHANNEL"
    scale = np.asarray(entry["scale"], np.float32)
    offset = np.asarray(entry["offset"], np.int64)
    zero_point = -offset if dtype == "uint8" else np.zeros(offset.shape, np.int64)  # the inverse of _aimet_entry
    if not per_channel:
        scale, zero_point = scale.reshape(()), zero_point.reshape(())
    return Encoding(scale, zero_point, dtype, 0 if per_channel else None)  # type: ignore[arg-type]


def read_aimet_encodings(path: Path) -> tuple[dict[str, Encoding], dict[str, Encoding]]:
    """The activation and parameter encodings of an ``encodings.json`` written by ``export_aimet_encodings``."""
    try:
        document = json.loads(path.read_text())
        return tuple(  # type: ignore[return-value]
            {e["name"]: _encoding(e, f"{path}: {e['name']}") for e in document[key]}
            for key in ("activation_encodings", "param_encodings"))
    except FileNotFoundError as err:
        raise CalibrationError(f"{path}: encodings file not found (run `make calibrate` first)") from err
    except (ValueError, KeyError, TypeError) as err:
        raise CalibrationError(f"{path}: not an encodings file in AIMET's layout ({err!r})") from err
