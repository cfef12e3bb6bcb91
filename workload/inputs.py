"""A workload's dataset with its calibration and evaluation tensors, preprocessed through the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from workload.config import WorkloadConfig
from workload.dataset import Dataset, workload_dataset
from workload.paths import cache_dir
from workload.preprocess import load_tensors


def load_workload_data(config: WorkloadConfig, root: Path, show_progress: bool = True
                       ) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """The dataset, its calibration tensors and its evaluation tensors (memory-mapped caches)."""
    ds = config.dataset
    dataset = workload_dataset(ds.images, ds.val_map, ds.calibration_list, config.model.num_classes, root)
    cache = cache_dir(root)
    allow = ds.allow_truncated_images
    evaluation = load_tensors(dataset.folder, dataset.names, config.preprocessing, cache, show_progress, allow)
    position = {name: i for i, name in enumerate(dataset.names)}
    if all(name in position for name in dataset.calibration_names):
        calibration = evaluation[[position[n] for n in dataset.calibration_names]]
    else:
        calibration = load_tensors(dataset.folder, dataset.calibration_names, config.preprocessing, cache,
                                   show_progress, allow)
    return dataset, calibration, evaluation
