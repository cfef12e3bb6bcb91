"""Workload YAML validation: one clear error per mistake, overrides on top of the YAML."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from calibration.steps.techniques import TECHNIQUES, check_techniques
from workload.config import load_workload, with_overrides
from workload.errors import WorkloadError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["mobilenetv2", "efficientnet-lite0", "resnet50"])
def test_shipped_workloads_are_valid(name: str) -> None:
    config = load_workload(ROOT / "workloads" / f"{name}.yaml")
    assert config.name == name
    check_techniques(config.calibration.techniques)
    assert all(step.name in TECHNIQUES for step in config.calibration.techniques)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "w.yaml"
    path.write_text(text)
    return path


BASE = (ROOT / "workloads" / "mobilenetv2.yaml").read_text()


def test_malformed_yaml(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match=r"w.yaml: malformed YAML at line \d+"):
        load_workload(_write(tmp_path, "name: [unclosed\nmodel: {"))


def test_unknown_key(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match=r"calibration: unknown key 'wieghts'"):
        load_workload(_write(tmp_path, BASE.replace("  weights: per-channel", "  wieghts: per-channel")))


def test_unknown_technique(tmp_path: Path) -> None:
    text = re.sub(r"techniques: \[.*\]", "techniques: [fold_bn, magic, profile]", BASE)
    assert text != BASE
    techniques = load_workload(_write(tmp_path, text)).calibration.techniques  # the schema checks the form only
    with pytest.raises(WorkloadError, match=r"techniques\[1\]: unknown technique 'magic'"):
        check_techniques(techniques)


def test_bad_enum_and_type(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="range: must be one of"):
        load_workload(_write(tmp_path, BASE.replace("range: mean_minmax", "range: guess")))
    with pytest.raises(WorkloadError, match="num_classes: must be an integer"):
        load_workload(_write(tmp_path, BASE.replace("num_classes: 1000", "num_classes: many")))


def test_missing_file() -> None:
    with pytest.raises(WorkloadError, match="nowhere.yaml: workload file not found"):
        load_workload(Path("nowhere.yaml"))


def test_overrides() -> None:
    config = load_workload(ROOT / "workloads" / "mobilenetv2.yaml")
    changed = with_overrides(config, "per-tensor", "entropy", "fold_bn,profile")
    assert changed.calibration.weights == "per-tensor" and changed.calibration.range == "entropy"
    assert [str(s) for s in changed.calibration.techniques] == ["fold_bn", "profile"]
    with pytest.raises(WorkloadError, match="WEIGHTS: must be one of"):
        with_overrides(config, weights="per-row")
    with pytest.raises(WorkloadError, match="TECHNIQUES: unknown technique 'cle2'"):
        check_techniques(with_overrides(config, techniques="fold_bn,cle2,profile").calibration.techniques)
