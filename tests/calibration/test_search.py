"""TECHNIQUES=auto: it scores candidates on calibration images only, never on labels, and keeps the best."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import calibration.evaluate
import calibration.steps.techniques
import workload.dataset
import workload.inputs
import workload.preprocess
from calibration.evaluate import top1_agreement
from calibration.graph.session import make_session, run_batches
from calibration.pipeline import held_out_agreement
from calibration.steps.runner import PrefixCache, run_steps, write_int8
from calibration.steps.search import plot_scores, search_techniques
from calibration.steps.state import StepContext
from calibration.steps.techniques import check_techniques
from tests.builders import bn_model, config_with, images
from workload.config import parse_technique, with_overrides
from workload.errors import CalibrationError, WorkloadError


def forbid(*_args, **_kwargs):
    raise AssertionError("the technique search touched evaluation labels")


def test_auto_never_reads_labels_and_keeps_the_best(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(workload.dataset.Dataset, "labels", property(forbid))
    for name in ("read_val_map", "derive_val_map", "open_dataset", "workload_dataset", "load_tensors"):
        monkeypatch.setattr(workload.preprocess if name == "load_tensors" else workload.dataset, name, forbid)
    monkeypatch.setattr(calibration.evaluate, "accuracy", forbid)
    data = images(48)
    model = bn_model()
    result = search_techniques(model, StepContext(config_with("auto"), data, False))

    labels = [s.label for s in result.scores]
    assert labels[:5] == ["none", "CLE", "CLE+BA", "CLE(act-aware)+BA", "CLE(act-aware,fused)"]
    stage_one = max(result.scores[:5], key=lambda s: s.key)
    assert labels[5:] == [f"{stage_one.label}+BC(empirical)", "CLE(act-aware,fused)+GPTQ",
                          "CLE(act-aware,fused)+GPTQ(act-order)"]
    assert len(labels) == len(set(labels))
    assert result.best.key == max(s.key for s in result.scores)
    # the kept state is the winner's: re-quantizing it reproduces the recorded score
    reference = run_batches(make_session(model, optimize=True), data)
    int8_model, _ = write_int8(result.state, per_channel=False)
    assert top1_agreement(reference, run_batches(make_session(int8_model, optimize=True), data)) == pytest.approx(
        result.best.agreement)
    report = result.report()
    assert report["chosen"] == result.best.label and len(report["candidates"]) == len(result.scores)
    assert all(np.isfinite(c["agreement"]) for c in report["candidates"] if not c["error"])
    plot_scores(result.scores, tmp_path / "search.png", "synthetic")
    assert (tmp_path / "search.png").stat().st_size > 0


def test_auto_must_stand_alone() -> None:
    assert config_with("auto").calibration.techniques == (parse_technique("auto", "TECHNIQUES"),)
    with pytest.raises(WorkloadError, match="cannot be combined"):
        check_techniques(with_overrides(config_with("fold_bn,profile"), None, None, "fold_bn,auto,profile")
                         .calibration.techniques)
    with pytest.raises(WorkloadError, match="does not take option"):
        check_techniques((parse_technique("auto:fast", "TECHNIQUES"),))


def test_held_out_agreement_separates_calibration_images() -> None:
    float_logits = np.eye(4)
    int8_logits = np.eye(4)[[0, 1, 3, 3]]  # image 2 disagrees
    split = held_out_agreement(float_logits, int8_logits, np.array([True, True, False, False]))
    assert split == {"agreement_calibration": 1.0, "agreement_held_out": 0.5}
    assert np.isnan(held_out_agreement(float_logits, int8_logits, np.ones(4, bool))["agreement_held_out"])


def test_candidates_from_the_prefix_cache_equal_fresh_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A list run from a cached prefix (and with the Hessians of the other column order) writes the same int8
    model as the list run alone, and the shared prefix and Hessian pass ran once."""
    data = images(24)
    model = bn_model()
    calls = {"hessians": 0, "profile": 0}
    techniques_module = calibration.steps.techniques
    real_hessians, real_profile = techniques_module.layer_hessians, techniques_module.profile_channels

    def counting(name, real):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(techniques_module, "layer_hessians", counting("hessians", real_hessians))
    monkeypatch.setattr(techniques_module, "profile_channels", counting("profile", real_profile))
    cache = PrefixCache()
    lists = ["fold_bn,cle,profile", "fold_bn,cle,profile,gptq", "fold_bn,cle,profile,gptq:act_order",
             "fold_bn,cle,profile,bias_correction"]
    cached = [run_steps(model, StepContext(config_with(t, "per-channel"), data, False), cache) for t in lists]
    assert calls == {"hessians": 1, "profile": 1}
    for techniques, state in zip(lists, cached):
        fresh = run_steps(model, StepContext(config_with(techniques, "per-channel"), data, False))
        assert [s["step"] for s in state.report["steps"]] == techniques.split(",")
        assert write_int8(state, True)[0].SerializeToString() == write_int8(fresh, True)[0].SerializeToString()
    assert calls["profile"] == 1 + len(lists)


def test_gptq_falls_back_to_the_best_first_stage_stem(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the fused activation-aware CLE cannot run, GPTQ still gets tried, on the best first-stage stem."""
    technique = calibration.steps.techniques.TECHNIQUES["cle"]
    real = technique.adapter

    def no_fused(state, ctx, option):
        if option == "activation_aware_fused":
            raise CalibrationError("cle: no ReLU6 to fuse")
        return real(state, ctx, option)

    monkeypatch.setitem(calibration.steps.techniques.TECHNIQUES, "cle", dataclasses.replace(technique,
                                                                                             adapter=no_fused))
    result = search_techniques(bn_model(), StepContext(config_with("auto"), images(24), False))
    labels = [s.label for s in result.scores]
    fused = next(s for s in result.scores if s.label == "CLE(act-aware,fused)")
    assert "no ReLU6 to fuse" in fused.error
    stage_one = max(result.scores[:5], key=lambda s: s.key)
    assert labels[5:] == [f"{stage_one.label}+BC(empirical)", f"{stage_one.label}+GPTQ",
                          f"{stage_one.label}+GPTQ(act-order)"]


def test_cle_variants_after_one_fold_share_its_channel_statistics(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLE variants run from one cached fold_bn state profile its channels once, profile takes CLE's statistics
    (a pass of its own only after high-bias absorption, which they do not describe), and each list writes the
    model it writes alone."""
    data = images(24)
    model = bn_model()
    techniques_module = calibration.steps.techniques
    real = techniques_module.profile_channels
    calls = []
    monkeypatch.setattr(techniques_module, "profile_channels",
                        lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    cache = PrefixCache()
    lists = ["fold_bn,cle:activation_aware,high_bias_absorption,profile", "fold_bn,cle:activation_aware_fused,profile",
             "fold_bn,cle,profile"]
    cached = [run_steps(model, StepContext(config_with(t), data, False), cache) for t in lists]
    assert len(calls) == 2
    for techniques, state in zip(lists, cached):
        fresh = run_steps(model, StepContext(config_with(techniques), data, False))
        assert write_int8(state, False)[0].SerializeToString() == write_int8(fresh, False)[0].SerializeToString()
    assert len(calls) == 2 + 2 + 1 + 1
