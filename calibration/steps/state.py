"""What the calibration steps read and change."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from calibration.quant.encodings import Encoding
from calibration.quant.plan import QuantPlan
from calibration.stats.profile import TensorStats
from calibration.transforms.fold import FoldedBN
from workload.config import WorkloadConfig


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


@dataclass(frozen=True)
class StepContext:
    config: WorkloadConfig
    calibration_images: np.ndarray
    show_progress: bool = True


Step = Callable[[PipelineState, StepContext, str | None], None]
