"""A table of every run under ``results/``: scenario, mode, throughput or latency, validity, accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from workload.files import write_atomic

COLUMNS = ["system", "workload", "scenario", "mode", "profile", "validity", "samples_per_s", "p50_ms", "p90_ms",
           "p99_ms", "early_stopping_latency_ms", "top1_pct", "float_top1_pct", "meets_target", "finished_utc", "note"]


def collect(results_root: Path) -> pd.DataFrame:
    """One row per ``summary.json`` in the results tree (staging directories are hidden and skipped)."""
    rows = []
    paths = sorted(results_root.glob("*/*/*/*/summary.json")) + sorted(
        results_root.glob("*/*/*/performance/*/summary.json"))
    for path in (p for p in paths if not any(part.startswith(".") for part in p.relative_to(results_root).parts)):
        summary = json.loads(path.read_text())
        row = {k: summary.get(k) for k in ("system", "workload", "scenario", "mode", "profile", "finished_utc",
                                                "note")}
        row.update({k: v for k, v in summary.get("performance", {}).items() if k in COLUMNS})
        accuracy = summary.get("accuracy")
        if accuracy:
            row["top1_pct"] = 100.0 * accuracy["top1"]
            row["float_top1_pct"] = 100.0 * accuracy["reference_top1"] if accuracy.get("reference_top1") else None
            row["meets_target"] = accuracy.get("meets_target")
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS).sort_values(["system", "workload", "scenario", "mode"],
                                                            ignore_index=True)


def write_table(table: pd.DataFrame, path: Path) -> None:
    write_atomic(path, table.to_csv(index=False, float_format="%.4f"))
