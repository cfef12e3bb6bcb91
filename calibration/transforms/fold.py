"""Batch-norm folding into the preceding Conv or Gemm.

W'[o] = W[o]·γ_o/σ_o and b' = β + (b − μ)·γ/σ with σ = sqrt(var + ε). A layer without a bias
gets one. The folded γ and β are kept per layer, because high-bias absorption and analytical
bias correction read the statistics of the BN output as N(β, γ²).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx

from calibration.graph.index import GraphIndex, attribute, drop_unused_initializers, fresh_name, remove_nodes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldedBN:
    """The BN statistics that were folded into ``layer`` (a Conv or Gemm node name)."""

    layer: str
    gamma: np.ndarray
    beta: np.ndarray


def fold_weights(weight: np.ndarray, bias: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                 mean: np.ndarray, var: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Numpy BN fold for a weight whose axis 0 is the output channel."""
    factor = gamma / np.sqrt(var + eps)
    folded_w = weight * factor.reshape((-1,) + (1,) * (weight.ndim - 1))
    folded_b = beta + (bias - mean) * factor
    return folded_w.astype(weight.dtype), folded_b.astype(weight.dtype)


def _gemm_weight_is_output_major(node: onnx.NodeProto) -> bool:
    return attribute(node, "transB", 0) == 1


def fold_batch_norms(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[FoldedBN], list[str]]:
    """Return a folded copy of ``model``, the folded statistics, and one line per BN left unfolded."""
    folded_model = onnx.ModelProto()
    folded_model.CopyFrom(model)
    index = GraphIndex.build(folded_model)
    folded: list[FoldedBN] = []
    skipped: list[str] = []
    doomed = []
    for bn in [n for n in folded_model.graph.node if n.op_type == "BatchNormalization"]:
        layer = index.producer.get(bn.input[0])
        if layer is None or layer.op_type not in ("Conv", "Gemm") or index.single_consumer(bn.input[0]) is not bn:
            skipped.append(f"{bn.name}: input is not produced by a Conv/Gemm used only by this BN")
            continue
        if not all(index.is_constant(name) for name in bn.input[1:5]) or not index.is_constant(layer.input[1]):
            skipped.append(f"{bn.name}: statistics or weights are not constants")
            continue
        if layer.op_type == "Gemm" and not _gemm_weight_is_output_major(layer):
            skipped.append(f"{bn.name}: Gemm without transB=1")
            continue
        gamma, beta, mean, var = (index.constant(name).astype(np.float32) for name in bn.input[1:5])
        weight = index.constant(layer.input[1])
        if len(layer.input) > 2 and layer.input[2]:
            bias = index.constant(layer.input[2])
        else:
            bias = np.zeros(weight.shape[0], np.float32)
            bias_name = fresh_name(folded_model, f"{layer.name or layer.output[0]}.bias")
            if len(layer.input) < 3:
                layer.input.append(bias_name)
            else:
                layer.input[2] = bias_name
        new_w, new_b = fold_weights(weight, bias, gamma, beta, mean, var, float(attribute(bn, "epsilon", 1e-5)))
        index.set_constant(layer.input[1], new_w)
        index.set_constant(layer.input[2], new_b)
        layer.output[0] = bn.output[0]
        doomed.append(bn)
        folded.append(FoldedBN(layer.name, gamma, beta))
    remove_nodes(folded_model, doomed)
    drop_unused_initializers(folded_model)
    log.info("folded %d batch norms, %d left", len(folded), len(skipped))
    return folded_model, folded, skipped
