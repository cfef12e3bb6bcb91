"""Bad harness configuration gets one clear error; settings layer user.conf over the built-in mlperf.conf."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
import yaml

from harness.cli import main
from harness.loadgen.backend import BackendError, OnnxRuntimeBackend
from harness.loadgen.scenarios import PROFILES, Measurement, loadgen_settings, parse_mode, parse_profile, user_conf
from workload.config import HarnessConfig, workload_from_dict
from workload.errors import WorkloadError

ROOT = Path(__file__).resolve().parents[2]


def workload_dict() -> dict:
    return yaml.safe_load((ROOT / "workloads" / "mobilenetv2.yaml").read_text())


@pytest.mark.parametrize("key", ["offline_batch_size", "server_batch_size", "workers"])
def test_batch_size_zero_is_rejected(key: str) -> None:
    data = workload_dict()
    data["harness"][key] = 0
    with pytest.raises(WorkloadError, match=rf"w.yaml: harness.{key} must be at least 1, got 0"):
        workload_from_dict(data, "w.yaml")


def test_unknown_harness_key_is_rejected() -> None:
    data = workload_dict()
    data["harness"]["batchsize"] = 8
    with pytest.raises(WorkloadError, match="w.yaml.harness: unknown key 'batchsize'"):
        workload_from_dict(data, "w.yaml")


def test_workload_yaml_harness_section_is_read() -> None:
    config = workload_from_dict(workload_dict(), "w.yaml")
    assert config.harness.offline_batch_size == 32 and config.harness.providers == ("CPUExecutionProvider",)


def test_unknown_scenario_mode_profile_are_clear_errors() -> None:
    from harness.loadgen.scenarios import parse_scenario

    with pytest.raises(WorkloadError, match="unknown scenario 'offline' \\(known: Offline, Server, SingleStream"):
        parse_scenario("offline")
    with pytest.raises(WorkloadError, match="unknown mode 'perf'"):
        parse_mode("perf")
    with pytest.raises(WorkloadError, match="unknown profile 'quick'"):
        parse_profile("quick")


def test_cli_reports_unknown_scenario_in_one_line(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["run", "--scenario", "Bogus", "--mode", "accuracy"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown scenario 'Bogus'") and "\n" not in err


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=r"nope.onnx: model file not found \(run `make calibrate` first\)"):
        OnnxRuntimeBackend(tmp_path / "nope.onnx", HarnessConfig())


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here")
def test_cuda_requested_but_missing_is_a_clear_error(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not used: the provider check comes first")
    with pytest.raises(BackendError, match="CUDAExecutionProvider was requested in harness.providers"):
        OnnxRuntimeBackend(model, HarnessConfig(providers=("CUDAExecutionProvider", "CPUExecutionProvider")))


def test_user_conf_layers_over_mlperf_conf_in_every_run(tmp_path: Path) -> None:
    cfg = HarnessConfig()
    text = user_conf("Offline", cfg, PROFILES["smoke"], 1000, Measurement(offline_qps=100.0), "test")
    assert "resnet50.Offline.target_qps = 130.000" in text
    path = tmp_path / "user.conf"
    path.write_text(text)
    for _ in range(2):  # LoadGen alone would apply mlperf.conf only on its first FromConfig call
        settings = loadgen_settings("Offline", "performance", cfg, path)
        assert settings.min_duration_ms == 4000 and settings.offline_expected_qps == pytest.approx(130.0)
        assert settings.performance_sample_count_override == 1000
        assert settings.qsl_rng_seed == 2085463073848966840  # from the built-in mlperf.conf
    submission = user_conf("Server", cfg, PROFILES["submission"], 1000, Measurement(single_latency_ms=4.0), "t")
    path.write_text(submission)
    settings = loadgen_settings("Server", "performance", cfg, path)
    assert settings.min_duration_ms == 600000 and settings.server_target_latency_ns == 15_000_000
    assert settings.server_target_qps == pytest.approx(125.0)


def test_run_recalibrates_when_the_build_used_other_settings(tmp_path: Path) -> None:
    import dataclasses

    from harness.workflow import calibrated_with
    from workload.config import with_overrides
    from workload.result_set import ResultSet

    config = workload_from_dict(workload_dict(), "w.yaml")
    assert not calibrated_with(config, tmp_path)  # nothing built yet
    recorded = {**dataclasses.asdict(config.calibration), "batch_size": 999,
                "techniques": [str(s) for s in config.calibration.techniques]}
    result = ResultSet(tmp_path / "build" / config.name, "calibration_report.json")
    result.stage("model.int8.onnx").write_bytes(b"int8 model")
    result.publish({"calibration": recorded})
    assert calibrated_with(config, tmp_path)
    assert not calibrated_with(config, tmp_path, "fp32")  # that model is not part of the result
    assert not calibrated_with(with_overrides(config, weights="per-tensor"), tmp_path)
