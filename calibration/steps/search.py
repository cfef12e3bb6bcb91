"""``TECHNIQUES=auto``: try the sensible technique combinations, keep the best.

Candidates are scored on the calibration images only (they never see evaluation images or any
labels): top-1 agreement of the int8 model (ORT_ENABLE_ALL, as deployed) with the float model,
then logit SQNR as the tie-break. The search is staged to keep it affordable: first the
combinations without bias correction (none, CLE, CLE+BA, activation-aware CLE+BA, activation-aware CLE
with ReLU6 fused), then empirical bias correction on the best of those, and GPTQ
weight rounding (both column orders) on the fused activation-aware CLE (on the best first-stage
combination where that CLE cannot run). A candidate that cannot apply is recorded with its error.

Those two second-stage candidates are the only ones that ever won: on MobileNetV2 and Lite0, per-channel
and per-tensor, the search's choice was always one of them, and analytical bias correction, GPTQ on the
best first-stage combination and bias correction or GPTQ without CLE (each 20–30 s on MobileNetV2) never
were (results/experiments/technique_search.md).

Candidates share work: each runs from the state its longest already-run prefix of steps (fold, CLE variant,
profile) left (``PrefixCache``), and GPTQ's two column orders share one Hessian pass.

Bias correction and GPTQ fit the same calibration images they are scored on, so the score of such a
candidate is slightly optimistic; the calibrate command's held-out split shows the real effect.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from calibration.evaluate import sqnr_db, top1_agreement
from calibration.graph.session import make_session, run_batches
from calibration.steps.runner import PrefixCache, run_steps, write_int8
from calibration.steps.state import PipelineState, StepContext
from workload.config import TechniqueStep
from workload.errors import CalibrationError
from workload.files import save_figure

log = logging.getLogger(__name__)

BASE = (TechniqueStep("fold_bn"),)
PROFILE = (TechniqueStep("profile"),)
# GPTQ's column orders: neither wins on every model (results/experiments/gptq.md), so the search tries both.
GPTQ_ORDERS = ((None, ""), ("act_order", "(act-order)"))
FUSED_AWARE = "CLE(act-aware,fused)"


@dataclass(frozen=True)
class CandidateScore:
    label: str
    techniques: tuple[TechniqueStep, ...]
    agreement: float  # on the calibration images
    sqnr_db: float
    seconds: float
    error: str = ""  # why the candidate could not run (then it scores -inf)

    @property
    def key(self) -> tuple[float, float]:
        return (self.agreement, self.sqnr_db) if not self.error else (-np.inf, -np.inf)

    def as_dict(self) -> dict:
        return {"label": self.label, "techniques": [str(s) for s in self.techniques], "agreement": self.agreement,
                "sqnr_db": self.sqnr_db, "seconds": round(self.seconds, 2), "error": self.error}


@dataclass
class SearchResult:
    best: CandidateScore
    state: PipelineState
    scores: list[CandidateScore]

    def report(self) -> dict:
        return {"chosen": self.best.label, "techniques": [str(s) for s in self.best.techniques],
                "scored_on": "calibration images (top-1 agreement with float, then logit SQNR)",
                "candidates": [s.as_dict() for s in self.scores]}


def _steps(*names: str) -> tuple[TechniqueStep, ...]:
    return tuple(TechniqueStep(*n.split(":")) for n in names)


def first_stage_candidates() -> dict[str, tuple[TechniqueStep, ...]]:
    """Combinations without bias correction. ReLU6→ReLU + CLE+BA is not one: it changes the float function and
    was never the best of these on MobileNetV2 or Lite0 (results/experiments/technique_search.md)."""
    return {
        "none": BASE + PROFILE,
        "CLE": BASE + _steps("cle") + PROFILE,
        "CLE+BA": BASE + _steps("cle", "high_bias_absorption") + PROFILE,
        "CLE(act-aware)+BA": BASE + _steps("cle:activation_aware", "high_bias_absorption") + PROFILE,
        FUSED_AWARE: BASE + _steps("cle:activation_aware_fused") + PROFILE,
    }


def _score(label: str, techniques: tuple[TechniqueStep, ...], float_model: onnx.ModelProto, ctx: StepContext,
           reference: np.ndarray, cache: PrefixCache) -> tuple[CandidateScore, PipelineState | None]:
    config = dataclasses.replace(ctx.config, calibration=dataclasses.replace(ctx.config.calibration,
                                                                             techniques=techniques))
    start = time.perf_counter()
    try:
        state = run_steps(float_model, StepContext(config, ctx.calibration_images, ctx.show_progress), cache)
        int8_model, _ = write_int8(state, config.calibration.per_channel)
    except CalibrationError as err:
        log.warning("auto: %s cannot run: %s", label, err)
        seconds = time.perf_counter() - start
        return CandidateScore(label, techniques, float("nan"), float("nan"), seconds, str(err)), None
    logits = run_batches(make_session(int8_model, optimize=True), ctx.calibration_images)
    score = CandidateScore(label, techniques, top1_agreement(reference, logits), sqnr_db(reference, logits),
                           time.perf_counter() - start)
    log.info("auto: %-28s agreement %6.2f %%  SQNR %5.1f dB  (%.0f s)", label, 100 * score.agreement, score.sqnr_db,
             score.seconds)
    return score, state


def search_techniques(float_model: onnx.ModelProto, ctx: StepContext) -> SearchResult:
    """Run the staged search on ``ctx.calibration_images``; return the best candidate's state and all scores."""
    reference = run_batches(make_session(float_model, optimize=True), ctx.calibration_images)
    scores: list[CandidateScore] = []
    kept: list[PipelineState] = []  # the best candidate's state so far: the others' models and Hessians go
    cache = PrefixCache()

    def attempt(label: str, techniques: tuple[TechniqueStep, ...]) -> None:
        log.info("auto: candidate %d, %s: %s", len(scores) + 1, label, ",".join(str(t) for t in techniques))
        score, state = _score(label, techniques, float_model, ctx, reference, cache)
        if state is not None and all(score.key > s.key for s in scores):
            kept[:] = [state]  # ties keep the earlier candidate, as max() below does
        scores.append(score)

    first_stage = first_stage_candidates()
    for label, techniques in first_stage.items():
        attempt(label, techniques)
    base = max(scores, key=lambda s: s.key)
    stem = base.techniques[:-1]  # everything before profile
    attempt(f"{base.label}+BC(empirical)", stem + PROFILE + (TechniqueStep("bias_correction", "empirical"),))
    fused = next(s for s in scores if s.label == FUSED_AWARE)
    gptq_label, gptq_stem = (base.label, stem) if fused.error else (FUSED_AWARE, fused.techniques[:-1])
    for option, suffix in GPTQ_ORDERS:
        attempt(f"{gptq_label}+GPTQ{suffix}", gptq_stem + PROFILE + (TechniqueStep("gptq", option),))
    best = max(scores, key=lambda s: s.key)
    if best.error:
        raise CalibrationError(f"auto: no technique combination could run ({best.error})")
    log.info("auto: chose %s", best.label)
    return SearchResult(best, kept[0], scores)


def plot_scores(scores: list[CandidateScore], path: Path, title: str) -> None:
    """Bar chart of each candidate's top-1 agreement (calibration images), best highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    usable = [s for s in scores if not s.error]
    best = max(usable, key=lambda s: s.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(usable) + 1.5))
    ax.barh([s.label for s in usable], [100 * s.agreement for s in usable],
            color=["tab:green" if s is best else "tab:blue" for s in usable])
    for i, s in enumerate(usable):
        ax.text(100 * s.agreement, i, f" {100 * s.agreement:.1f}", va="center")
    ax.set_xlim(max(0.0, min(100 * s.agreement for s in usable) - 5), 100)
    ax.set_xlabel("top-1 agreement with float (%)")
    ax.set_title(title)
    ax.invert_yaxis()
    fig.tight_layout()
    save_figure(fig, path)
