"""``submission.yaml``: the submission fields that cannot be read from the machine.

Validated once here (``safe_load``, unknown keys rejected); every mistake is one ``SubmissionError`` line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.submission.rules import VALID_DIVISIONS, VALID_STATUSES, VALID_SYSTEM_TYPES
from workload.errors import HarnessError
from workload.schema import from_mapping, read_yaml


class SubmissionError(HarnessError):
    """The submission config, tree or one of its inputs is missing or invalid."""


@dataclass(frozen=True)
class SubmissionConfig:
    submitter: str
    division: str = "closed"
    status: str = "available"
    system_type: str = "edge"
    system_name: str = ""  # empty: "<CPU model> (ONNX Runtime, CPU)"
    cooling: str = "air"
    host_storage_type: str = ""  # empty: read from the machine (SSD or HDD)
    host_networking: str = "N/A (single node, no network in the measured path)"
    host_networking_topology: str = "N/A"
    host_network_card_count: str = "0"
    host_memory_configuration: str = ""  # empty: "<total> (DIMM layout not readable without root)"
    host_processor_interconnect: str = "N/A"
    hw_notes: str = ""
    sw_notes: str = ""


def load_submission_config(path: Path) -> SubmissionConfig:
    data = read_yaml(path, SubmissionError, "submission config (copy the repository's submission.yaml)")
    if isinstance(data, dict) and not str(data.get("submitter", "")).strip():
        raise SubmissionError(f"{path}: submitter is required (the organisation's name)")
    config = from_mapping(SubmissionConfig, data, str(path), SubmissionError)
    for key, allowed in (("division", VALID_DIVISIONS), ("status", VALID_STATUSES),
                         ("system_type", VALID_SYSTEM_TYPES)):
        if getattr(config, key) not in allowed:
            raise SubmissionError(f"{path}: {key} must be one of {', '.join(allowed)}, got '{getattr(config, key)}'")
    if "/" in config.submitter or config.submitter.startswith("."):
        raise SubmissionError(f"{path}: submitter '{config.submitter}' cannot be used as a folder name")
    return config
