"""Calibration plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use("Agg")

from workload.files import save_figure


def plot_cle_weight_ranges(depthwise_ranges: dict[str, dict[str, list[float]]], path: Path) -> None:
    """Per-output-channel max|W| of the first depthwise layers, before and after CLE (log scale)."""
    if not depthwise_ranges:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(depthwise_ranges), 1, figsize=(10, 3 * len(depthwise_ranges)), squeeze=False)
    for ax, (layer, ranges) in zip(axes[:, 0], depthwise_ranges.items()):
        channels = range(len(ranges["before"]))
        ax.bar(channels, ranges["before"], color="tab:red", alpha=0.6, label="before CLE")
        ax.bar(channels, ranges["after"], color="tab:blue", alpha=0.6, label="after CLE")
        ax.set_yscale("log")
        ax.set_title(layer)
        ax.set_xlabel("output channel")
        ax.set_ylabel("max |W|")
        ax.legend(loc="upper right")
    fig.tight_layout()
    save_figure(fig, path)
