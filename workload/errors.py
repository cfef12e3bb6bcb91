"""Typed errors whose messages a user can act on. The CLI prints them as one line."""


class HarnessError(Exception):
    """Base class: anything the user can fix (bad input, missing file, unsupported model)."""


class WorkloadError(HarnessError):
    """A workload YAML or a command-line override is invalid."""


class DataError(HarnessError):
    """An image, label map or calibration list is missing or malformed."""


class CheckpointError(HarnessError):
    """A weight checkpoint cannot be read safely."""


class CalibrationError(HarnessError):
    """The model cannot be calibrated (unsupported operator, missing input, ...)."""


class OutputError(HarnessError):
    """A result cannot be written: permission denied, read-only folder or full disk. The message names the path."""
