"""High-bias absorption (Nagel et al., ICCV 2019, section 4.2)."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import onnx

from calibration.graph.patterns import pads_input
from calibration.transforms.cle.sets import find_cle_sets
from calibration.transforms.cle.workspace import EqualizationResult, Workspace
from calibration.transforms.fold import FoldedBN

log = logging.getLogger(__name__)


def absorb_high_biases(model: onnx.ModelProto, folded: dict[str, FoldedBN]) -> EqualizationResult:
    """Move each channel's surely-positive bias part into the next layer of every set.

    With a ReLU (or per-channel Relu→Min bound t) between the layers, c = max(0, β − 3|γ|)
    (at most t): relu(x) = relu(x − c) + c wherever x ≥ c, so b1 −= c, b2 += ΣW2·c and t −= c.
    With no activation c = β. β and γ are the BN statistics of the layer's output, already
    divided by any CLE scales; β of the next layer moves by ΣW2·c, so later links see it.
    A next layer that zero-pads its input is skipped (the paper and AIMET absorb anyway): its
    border outputs would see ΣW2·c over the padded taps too. Absorbing into the padded depthwise
    layers anyway cost far more float top-1 than skipping them, on Lite0 most
    (results/experiments/cle.md).
    """
    sets, _ = find_cle_sets(model)
    ws = Workspace.load(model, sets)
    stats = dict(folded)
    absorbed, skipped = [], []
    for cle_set in sets:
        for first, second, link in zip(cle_set.layers, cle_set.layers[1:], cle_set.links):
            if first not in stats:
                skipped.append({"layers": [first, second], "reason": f"'{first}' has no folded BN statistics"})
                continue
            if pads_input(ws.layers[second].node):
                skipped.append({"layers": [first, second], "reason": f"'{second}' zero-pads its input: the "
                                "absorbed constant would be wrong at the borders"})
                continue
            if link.kind == "clip":
                skipped.append({"layers": [first, second],
                                "reason": "ReLU6 kept as a scalar Clip: absorbing needs per-channel bounds"})
                continue
            bn = stats[first]
            if link.kind == "none":
                c = bn.beta.astype(np.float64)
            else:
                c = np.maximum(0.0, bn.beta - 3.0 * np.abs(bn.gamma)).astype(np.float64)
                if link.tensor in ws.bounds:
                    c = np.minimum(c, ws.bounds[link.tensor])
                    ws.bounds[link.tensor] = ws.bounds[link.tensor] - c
            layer1, layer2 = ws.ensure_bias(first), ws.ensure_bias(second)
            shift = layer2.window_sums() * c if layer2.depthwise else layer2.window_sums() @ c
            layer1.bias -= c
            layer2.bias += shift
            stats[first] = replace(bn, beta=(bn.beta - c).astype(bn.beta.dtype))
            if second in stats:
                nxt = stats[second]
                stats[second] = replace(nxt, beta=(nxt.beta + shift).astype(nxt.beta.dtype))
            absorbed.append({"layers": [first, second], "activation": link.kind,
                             "channels": int(np.count_nonzero(c)), "total": float(np.abs(c).sum()),
                             "max": float(np.abs(c).max(initial=0.0))})
    report = {"absorbed": absorbed, "skipped": skipped}
    log.info("high-bias absorption: %d links absorbed, %d skipped", len(absorbed), len(skipped))
    return EqualizationResult(ws.write_back(sets), stats, report)
