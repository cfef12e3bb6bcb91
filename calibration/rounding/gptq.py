"""GPTQ weight rounding (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers", ICLR 2023, after Optimal Brain Quantization).

Round-to-nearest makes each weight's error small; what matters is the layer's output error
‖(W − Ŵ)X‖² over the inputs X it will see. With H = Σ x̃x̃ᵀ over the calibration rows (x̃ = [x; 1],
per convolution group), GPTQ quantizes one input column at a time and spreads that column's
rounding error over the columns not yet quantized, through the Cholesky factor of H⁻¹, so that they
compensate for it. The bias is the last column and is never quantized to int8: it absorbs the
error that the weights cannot (the mean part of it is what bias correction would remove).

The inputs X come from one pass over the calibration images through the int8 model itself, with
round-to-nearest weights, as ORT runs it with its fused int8 kernels (``profile`` has run): each layer's X is
the dequantized uint8 tensor it reads there, so the layers before it carry their own weight rounding, as in the
GPTQ paper's sequential form. H is computed inside ONNX Runtime in that pass, on sampled rows for large and small
layers (``calibration.rounding.hessian``; the figures: results/experiments/gptq_speed.md).

The target is the layer's own float weights on its quantized inputs, not the float model's outputs.
Fitting each layer to the float outputs (so that it also compensates the quantization of its inputs)
lowered agreement: in one pass every layer corrects what the layers before it already corrected, and
even layer by layer and regularized toward W the fit does not generalize beyond the images it was fitted on.

Column order (``act_order``): rounding the columns with the largest H diagonal first is GPTQ's
"act-order". Neither order wins on every model and weight setting, so both are offered and ``auto``
tries both.

The scales stay those of round-to-nearest (max|W|/127 per channel or per tensor; a per-row scale search
changed nothing), and the element that sets each scale is pinned at ±127, so the int8 grid values written
here are exactly what ``calibration.quant.simulate.quantized_weights`` recovers from the model: the weights
become float values on that grid.

The measured variants and the column-order figures: results/experiments/gptq.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from tqdm import tqdm

from calibration.graph.index import GraphIndex, conv_group, fresh_name
from calibration.graph.patterns import WEIGHTED_OPS, weight_axis
from calibration.quant.encodings import Encoding, weight_encoding
from calibration.quant.plan import QuantPlan
from calibration.quant.writer import write_qdq_model
from calibration.rounding.hessian import input_hessians
from workload.errors import CalibrationError

log = logging.getLogger(__name__)

# Dampening added to H's diagonal, as a fraction of its mean diagonal (the GPTQ paper's default).
DAMPING = 0.01
# Columns rounded between two GEMM updates of the later columns (the GPTQ paper uses 128).
BLOCK = 128
# Size at which the triangular inverse in ``inverse_cholesky`` stops splitting and inverts directly.
TRIANGLE_BLOCK = 128


@dataclass(frozen=True)
class RoundedLayer:
    layer: str
    rtn_error: float  # Σ‖(W − Ŵ_rtn)x‖² / Σ‖Wx + b‖² on the quantized inputs: round-to-nearest
    gptq_error: float  # the same for the GPTQ weights and bias

    def as_dict(self) -> dict[str, float | str]:
        return {"layer": self.layer, "rtn_error": self.rtn_error, "gptq_error": self.gptq_error}


def damped(hessian: np.ndarray) -> np.ndarray:
    """H with dead inputs given a unit diagonal and DAMPING·mean(diag) added to the diagonal."""
    h = np.array(hessian, np.float64)
    diagonal = np.arange(h.shape[1])
    h[:, diagonal, diagonal] += np.where(h[:, diagonal, diagonal] == 0, 1.0, 0.0)
    h[:, diagonal, diagonal] += DAMPING * h[:, diagonal, diagonal].mean(axis=1, keepdims=True)
    return h


def inverse_cholesky(hessian: np.ndarray) -> np.ndarray:
    """The upper triangular U with H⁻¹ = UᵀU for the damped H (groups, K, K), without forming H⁻¹.

    With J the order-reversing permutation and JHJ = LLᵀ (lower L), H⁻¹ = (J L⁻ᵀ J)(J L⁻¹ J), and J L⁻¹ J
    is upper triangular with a positive diagonal, so by the uniqueness of Cholesky factors it is U. A
    Cholesky factorization and a triangular inverse cost a third of the flops of a general inverse
    followed by a Cholesky factorization, and never round H⁻¹ itself.
    """
    lower = np.linalg.cholesky(damped(hessian)[:, ::-1, ::-1])
    return _lower_inverse(lower)[:, ::-1, ::-1]


def _lower_inverse(lower: np.ndarray) -> np.ndarray:
    """L⁻¹ for lower triangular L (groups, K, K), by halves: [[A, 0], [B, C]]⁻¹ = [[A⁻¹, 0], [−C⁻¹BA⁻¹, C⁻¹]],
    so that nearly all of the work is matrix products."""
    k = lower.shape[1]
    if k <= TRIANGLE_BLOCK:
        return np.tril(np.linalg.inv(lower))
    half = k // 2
    result = np.zeros_like(lower)
    top = result[:, :half, :half] = _lower_inverse(lower[:, :half, :half])
    bottom = result[:, half:, half:] = _lower_inverse(lower[:, half:, half:])
    result[:, half:, :half] = -np.matmul(bottom, np.matmul(lower[:, half:, :half], top))
    return result


def gptq_round(weight: np.ndarray, hessian: np.ndarray, encoding: Encoding, free_columns: int = 0,
               act_order: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes for the first K − ``free_columns`` columns of ``weight`` (groups, rows, K) given
    ``hessian`` (groups, K, K) and the round-to-nearest ``encoding`` of those columns (per row, scales
    (groups·rows,), or per tensor), and the final values of the free columns (a bias), which absorb
    the error left.

    Columns are quantized in order, or with ``act_order`` in decreasing order of H's diagonal (the
    inputs with the most energy first, while the most columns are left to absorb their error); each
    column's error, divided by the Cholesky factor's diagonal, updates the later columns. The element
    that sets each scale stays at ±127 exactly. The free columns always come last.
    """
    if not act_order:
        return _round_in_order(weight, hessian, encoding, free_columns)
    quantized = weight.shape[2] - free_columns
    energy = np.diagonal(hessian, axis1=1, axis2=2)[:, :quantized]
    order = np.concatenate([np.argsort(-energy, axis=1, kind="stable"),
                            np.broadcast_to(np.arange(quantized, weight.shape[2]), (len(energy), free_columns))],
                           axis=1)
    permuted_hessian = np.take_along_axis(np.take_along_axis(hessian, order[:, :, None], axis=1),
                                          order[:, None, :], axis=2)
    codes, free = _round_in_order(np.take_along_axis(weight, order[:, None, :], axis=2), permuted_hessian,
                                  encoding, free_columns)
    restored = np.empty_like(codes)
    np.put_along_axis(restored, np.broadcast_to(order[:, None, :quantized], codes.shape), codes, axis=2)
    return restored, free


def _round_in_order(weight: np.ndarray, hessian: np.ndarray, encoding: Encoding, free_columns: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    groups, rows, k = weight.shape
    quantized = k - free_columns
    scale = np.broadcast_to(encoding.scale.astype(np.float64).reshape(-1, 1) if encoding.axis is not None
                            else np.float64(encoding.scale), (groups * rows, 1)).reshape(groups, rows, 1)
    upper = inverse_cholesky(hessian)

    original = weight.astype(np.float64)
    absolute = np.abs(original[:, :, :quantized])
    limit = absolute.max(axis=2, keepdims=True) if encoding.axis is not None else absolute.max()
    # Columns as rows, so that each column and each block of columns is contiguous.
    pinned = (absolute == limit).transpose(0, 2, 1)
    kept = original.transpose(0, 2, 1)
    w = kept.copy()
    step = scale.transpose(0, 2, 1)[:, 0]
    codes = np.empty((groups, quantized, rows), np.int8)
    # Lazy batch updates (the GPTQ paper's): columns are rounded one by one within a block, and the block's
    # errors reach the later columns in one GEMM. Column c's value is original_c − Σ_{j<c} e_j·U[j, c] either way,
    # except that the elements that set a scale are read as their original values.
    for begin in range(0, quantized, BLOCK):
        end = min(begin + BLOCK, quantized)
        block = w[:, begin:end]
        errors = np.empty_like(block)
        for j in range(end - begin):
            column = begin + j
            value = np.where(pinned[:, column], kept[:, column], block[:, j])
            q = np.clip(np.round(value / step), -127, 127)
            codes[:, column] = q
            errors[:, j] = (value - q * step) / upper[:, column, column][:, None]
            block[:, j + 1 :] -= upper[:, column, column + 1 : end, None] * errors[:, None, j]
        w[:, end:] -= np.matmul(upper[:, begin:end, end:].transpose(0, 2, 1), errors)
    return codes.transpose(0, 2, 1), w[:, quantized:].transpose(0, 2, 1)


def output_errors(weight: np.ndarray, hessian: np.ndarray, *approximations: np.ndarray) -> list[float]:
    """tr(ΔW̃ H ΔW̃ᵀ) / tr(W̃ H W̃ᵀ), summed over groups, for each approximation: the relative output error
    energy on the rows behind H. GEMMs (einsum's three-operand loop took seconds), the energy computed once."""
    w = weight.astype(np.float64)
    energy = max(float(np.sum(np.matmul(w, hessian) * w)), 1e-30)
    errors = []
    for approximation in approximations:
        delta = w - approximation
        errors.append(float(np.sum(np.matmul(delta, hessian) * delta)) / energy)
    return errors


def _grouped(weight: np.ndarray, groups: int) -> np.ndarray:
    return weight.reshape(groups, weight.shape[0] // groups, -1)


def _bias(index: GraphIndex, model: onnx.ModelProto, node: onnx.NodeProto, channels: int) -> str:
    """The layer's bias initializer, added (zero) when it has none."""
    if len(node.input) > 2 and node.input[2]:
        return node.input[2]
    name = fresh_name(model, f"{node.name or node.output[0]}.bias")
    index.set_constant(name, np.zeros(channels, np.float32))
    while len(node.input) < 3:
        node.input.append("")
    node.input[2] = name
    return name


def _layers(index: GraphIndex) -> list[onnx.NodeProto]:
    return [n for n in index.model.graph.node if n.op_type in WEIGHTED_OPS and index.is_constant(n.input[1])]


def layer_hessians(model: onnx.ModelProto, plan: QuantPlan, activations: dict[str, Encoding], images: np.ndarray,
                   batch_size: int, per_channel: bool, show_progress: bool = True) -> dict[str, np.ndarray]:
    """Every weighted layer's H on its quantized inputs: what ``round_weights`` needs, whatever the column order
    (the search computes it once for both orders). The inputs are those of the int8 model with round-to-nearest
    weights of the run's granularity, run with ORT's fused int8 kernels."""
    layers = _layers(GraphIndex.build(model))
    quantized, _ = write_qdq_model(model, plan, activations, per_channel)
    return input_hessians(quantized, [n.name for n in layers], images, batch_size, show_progress, optimize=True)


def round_weights(model: onnx.ModelProto, hessians: dict[str, np.ndarray], per_channel: bool,
                  show_progress: bool = True, act_order: bool = False) -> tuple[onnx.ModelProto, list[RoundedLayer]]:
    """A copy of ``model`` whose weights are GPTQ-rounded values on their int8 grids and whose biases
    absorb the rest of the rounding error, with a per-layer report (``act_order``: see ``gptq_round``).
    ``hessians``: ``layer_hessians`` of ``model`` (a zero bias added here to a layer without one changes no
    layer's inputs)."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    index = GraphIndex.build(result)
    layers = _layers(index)
    shared = [n.name for n in layers if len(index.consumers[n.input[1]]) > 1]
    if shared:
        raise CalibrationError(f"gptq: layer '{shared[0]}' shares its weight with another layer")
    matmul = [n.name for n in layers if n.op_type == "MatMul"]
    if matmul:
        raise CalibrationError(f"gptq: MatMul '{matmul[0]}' has no bias to absorb the rounding error")
    biases = {node.name: _bias(index, result, node, index.constant(node.input[1]).shape[weight_axis(node)])
              for node in layers}
    report = []
    for node in tqdm(layers, desc="gptq rounding", unit="layer", disable=not show_progress):
        weight = index.constant(node.input[1])
        axis = weight_axis(node)
        moved = np.moveaxis(weight, axis, 0)
        groups = conv_group(node) if node.op_type == "Conv" else 1
        bias = index.constant(biases[node.name]).astype(np.float64).reshape(groups, -1, 1)
        original = np.concatenate([_grouped(moved, groups).astype(np.float64), bias], axis=2)
        encoding = weight_encoding(moved, per_channel)
        codes, new_bias = gptq_round(original, hessians[node.name], encoding, free_columns=1, act_order=act_order)
        scale = encoding.scale.reshape(groups, -1, 1) if per_channel else encoding.scale
        rounded = (codes * scale).astype(np.float32)
        nearest = _grouped(encoding.fake_quantize(moved), groups)
        report.append(RoundedLayer(node.name, *output_errors(original, hessians[node.name],
                                                             np.concatenate([nearest, bias], axis=2),
                                                             np.concatenate([rounded, new_bias], axis=2))))
        index.set_constant(node.input[1], np.moveaxis(rounded.reshape(moved.shape), 0, axis))
        index.set_constant(biases[node.name], new_bias.reshape(-1))
    log.info("gptq: %d layers, relative output error %.3g → %.3g (sum over layers)", len(report),
             sum(r.rtn_error for r in report), sum(r.gptq_error for r in report))
    return result, report
