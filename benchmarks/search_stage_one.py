"""Would ``auto``'s first stage rank its stems the same on a subset of the calibration images as on all of them?

For each model and weight setting, the first-stage candidates (``calibration.steps.search.first_stage_candidates``)
run twice: on every calibration image and on every ``--stride``-th one, each scored on the images it ran on, as the
search scores them. The table gives both rankings, the stem each picks for bias correction, and the time each
took. (The search runs its first stage on every image: on every 4th the stem changed in 2 of 4 settings,
results/experiments/technique_search.md.)

    python -m benchmarks.search_stage_one [--models mobilenetv2 ...] [--weights per-channel ...] [--stride 4]

Writes results/benchmarks/search_stage_one.json and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.calibration_speed import source_state
from benchmarks.common import load_workload_inputs, run_main, start_benchmark
from calibration.evaluate import sqnr_db, top1_agreement
from calibration.graph.session import make_session, run_batches
from calibration.steps.runner import PrefixCache, run_steps, write_int8
from calibration.steps.search import first_stage_candidates
from calibration.steps.state import StepContext
from workload.config import with_overrides
from workload.errors import CalibrationError
from workload.files import write_json

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench-search-stage-one")


def rank_stems(float_model, config, images: np.ndarray) -> tuple[dict[str, float], float]:
    """Each first-stage candidate's agreement on ``images`` (NaN where it cannot run), and the seconds taken."""
    start = time.perf_counter()
    reference = run_batches(make_session(float_model, optimize=True), images)
    cache = PrefixCache()
    scores = {}
    for label, techniques in first_stage_candidates().items():
        listed = dataclasses.replace(config, calibration=dataclasses.replace(config.calibration, techniques=techniques))
        try:
            state = run_steps(float_model, StepContext(listed, images, False), cache)
        except CalibrationError as err:
            log.info("%s cannot run: %s", label, err)
            scores[label] = (float("nan"), float("nan"))
            continue
        logits = run_batches(make_session(write_int8(state, config.calibration.per_channel)[0], optimize=True), images)
        scores[label] = (top1_agreement(reference, logits), sqnr_db(reference, logits))
    return scores, time.perf_counter() - start


def best(scores: dict[str, tuple[float, float]]) -> str:
    usable = {k: v for k, v in scores.items() if np.isfinite(v[0])}
    return max(usable, key=lambda k: usable[k])


def main() -> int:
    parser = argparse.ArgumentParser(description="auto's first-stage ranking on its subset against all images")
    parser.add_argument("--models", nargs="+", default=["mobilenetv2", "efficientnet-lite0"])
    parser.add_argument("--weights", nargs="+", default=["per-channel", "per-tensor"])
    parser.add_argument("--stride", type=int, default=4, help="the subset: every stride-th calibration image")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "benchmarks" / "search_stage_one.json")
    args = parser.parse_args()
    start_benchmark(ROOT)
    rows: list[dict[str, Any]] = []
    for model in args.models:
        data = load_workload_inputs(ROOT, model)
        for weights in args.weights:
            config = with_overrides(data.config, weights, None, None)
            subset = data.calibration[:: args.stride]
            full, full_s = rank_stems(data.float_model, config, data.calibration)
            part, part_s = rank_stems(data.float_model, config, subset)
            row = {"model": model, "weights": weights, "images": len(data.calibration), "subset_images": len(subset),
                   "stem_all": best(full), "stem_subset": best(part), "seconds_all": full_s, "seconds_subset": part_s,
                   "agreement_all": {k: v[0] for k, v in full.items()},
                   "agreement_subset": {k: v[0] for k, v in part.items()},
                   "rank_all": sorted(full, key=lambda k: full[k], reverse=True),
                   "rank_subset": sorted(part, key=lambda k: part[k], reverse=True)}
            log.info("%s %s: stem %s on all, %s on the subset", model, weights, row["stem_all"], row["stem_subset"])
            rows.append(row)
    write_json(args.output, {"source": source_state(), "rows": rows})
    table = pd.DataFrame(rows)[["model", "weights", "stem_all", "stem_subset", "seconds_all", "seconds_subset"]]
    print(table.to_string(index=False))
    for row in rows:
        print(row["model"], row["weights"])
        for label in row["rank_all"]:
            print(f"  {label:24s} all {100 * row['agreement_all'][label]:6.2f} %   subset "
                  f"{100 * row['agreement_subset'][label]:6.2f} %")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
