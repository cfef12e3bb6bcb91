"""What the calibration steps read and change."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from calibration.quant.encodings import Encoding
from calibration.quant.plan import QuantPlan
from calibration.stats.channels import ChannelStats
from calibration.stats.profile import TensorStats
from calibration.transforms.fold import FoldedBN
from workload.config import WorkloadConfig


@dataclass(frozen=True)
class ChannelView:
    """Per-channel statistics that describe ``model``: ``stats`` (profiled on the model before CLE), with the
    channels of each tensor in ``divisors`` divided by its scales (``EqualizationResult.divisors``)."""

    model: onnx.ModelProto
    stats: dict[str, ChannelStats]
    divisors: dict[str, np.ndarray] = field(default_factory=dict)

    def tensor_stats(self, tensors: list[str]) -> dict[str, TensorStats]:
        return {t: self.stats[t].tensor_stats(self.divisors.get(t)) for t in tensors}


@dataclass
class PipelineState:
    """What the steps read and change. Steps replace ``model``; they never edit the caller's copy."""

    model: onnx.ModelProto
    folded: dict[str, FoldedBN] = field(default_factory=dict)
    plan: QuantPlan | None = None
    stats: dict[str, TensorStats] = field(default_factory=dict)
    activations: dict[str, Encoding] = field(default_factory=dict)
    outputs: dict[str, Encoding] = field(default_factory=dict)  # the graph outputs' encodings (QuantPlan.outputs)
    report: dict[str, Any] = field(default_factory=dict)
    # Results a later step may reuse, keyed by what they were computed from (GPTQ's Hessians: the model and
    # activation encodings objects they came from). Branches of one state share this dict, not a copy.
    shared: dict[str, Any] = field(default_factory=dict)
    # CLE's per-channel statistics of the calibration images, as they describe the model CLE wrote: ``profile``
    # takes its statistics from them while ``model`` is still that model.
    channels: ChannelView | None = None

    def branch(self) -> PipelineState:
        """A copy that later steps may change without touching this state: steps replace the model, the
        plan, the statistics and the encodings (never edit them) but add to ``folded`` and the report."""
        return dataclasses.replace(self, folded=dict(self.folded), report=copy.deepcopy(self.report))


@dataclass(frozen=True)
class StepContext:
    config: WorkloadConfig
    calibration_images: np.ndarray
    show_progress: bool = True


Step = Callable[[PipelineState, StepContext, str | None], None]
