"""LoadGen's query sample library over a workload's preprocessed tensors.

The tensors stay on disk (a memory map of the preprocessing cache); ``load_samples`` copies the requested
ones into RAM and ``unload_samples`` drops them, so LoadGen controls what is resident.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from workload.errors import HarnessError

log = logging.getLogger(__name__)


class SampleLibrary:
    """Samples ``0..total_count-1``; ``performance_count`` is the configured count capped by the dataset size."""

    def __init__(self, tensors: np.ndarray, performance_sample_count: int) -> None:
        if len(tensors) == 0:
            raise HarnessError("the query sample library needs at least one sample")
        self.tensors = tensors
        self.total_count = len(tensors)
        self.performance_count = min(performance_sample_count, self.total_count)
        self._resident: dict[int, np.ndarray] = {}

    def load_samples(self, indices: Sequence[int]) -> None:
        wanted = sorted(set(indices) - set(self._resident))
        if wanted:
            block = np.asarray(self.tensors[wanted])  # one read from the memory map into RAM
            self._resident.update(zip(wanted, block))
        log.debug("loaded %d samples (%d resident)", len(wanted), len(self._resident))

    def unload_samples(self, indices: Sequence[int]) -> None:
        for index in indices:
            self._resident.pop(index, None)

    @property
    def resident_count(self) -> int:
        return len(self._resident)

    def batch(self, indices: Sequence[int]) -> np.ndarray:
        """The resident samples ``indices`` stacked as one batch (N, 3, H, W)."""
        try:
            if len(indices) == 1:
                return self._resident[indices[0]][None]
            return np.stack([self._resident[i] for i in indices])
        except KeyError as err:
            raise HarnessError(f"sample {err.args[0]} was queried but LoadGen never loaded it") from err
