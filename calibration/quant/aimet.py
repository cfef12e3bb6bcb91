"""Export of encodings in AIMET's layout (activation_encodings / param_encodings)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from calibration.quant.encodings import Encoding
from workload.files import write_json


def _aimet_entry(name: str, encoding: Encoding) -> dict:
    # AIMET's unsigned view: real = (q_u + offset)·scale with q_u in [0, 2^bw − 1].
    bits = 32 if encoding.dtype == "int32" else 8
    offsets = np.atleast_1d(encoding.qmin - encoding.zero_point if encoding.dtype == "uint8"
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
