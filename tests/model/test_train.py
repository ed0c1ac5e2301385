import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from medops.training.checkpoint import check_compatible, load_checkpoint, model_from_checkpoint
from medops.errors import MedopsError
from medops.runs import evaluate_checkpoint, train_and_evaluate
from medops.training.models import InputSpec
from medops.training.loop import TrainingDiverged, train
from tests.conftest import fast_recipe, make_processed, write_params

TASKS = [  # (flag, size, arch): every task type, 2D and 3D
    ("pneumoniamnist", 28, "baseline_cnn"),  # binary
    ("pathmnist", 28, "improved_cnn"),  # multi-class RGB
    ("chestmnist", 28, "baseline_cnn"),  # multi-label
    ("retinamnist", 28, "octnet"),  # ordinal
    ("organmnist3d", 28, "cnn3d"),  # 3D multi-class
    ("dermamnist", 64, "resnet18"),  # 64px, standard stem
]


@pytest.mark.parametrize("flag,size,arch", TASKS)
def test_every_task_type_trains_and_evaluates(project, flag, size, arch):
    processed = make_processed(flag, size, samples=16)
    cfg = fast_recipe(arch=arch, epochs=2, augment={"enabled": True})
    result, summary = train_and_evaluate(processed, cfg, project / "m", project / "r")
    assert len(result.history) == 2 and result.checkpoint.exists()
    for split in ("val", "test"):
        assert 0 <= summary[split]["acc"] <= 1 and summary[split]["n"] == 16
        assert 0 <= summary[split]["ece"] <= 1
    saved = json.loads((project / "r/metrics.json").read_text())
    assert saved["arch"] == arch and saved["test"]["per_class"]
    assert {"roc_test.png", "calibration_test.png", "history.png"} <= {p.name for p in (project / "r").iterdir()}


def test_a_wider_model_is_rebuilt_at_its_width_from_its_checkpoint(project):
    processed = make_processed("organmnist3d", samples=8)
    result = train(processed, fast_recipe(arch="cnn3d_pool_first", epochs=1, width=1.5), project / "m")
    model, ckpt = model_from_checkpoint(result.checkpoint)  # loads the weights, or fails on any shape
    assert ckpt["model_options"]["width"] == 1.5
    assert [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv3d)] == [24, 48, 96]
    # an architecture with no width to scale trains as it is; its checkpoint records none
    other = train(make_processed("pneumoniamnist", samples=8), fast_recipe(arch="octnet", epochs=1, width=1.5),
                  project / "o")
    assert "width" not in load_checkpoint(other.checkpoint)["model_options"]


def test_auto_width_builds_2d_models_twice_as_wide_and_says_so(project, caplog):
    caplog.set_level("INFO", logger="medops")
    result = train(make_processed("pneumoniamnist", samples=8), fast_recipe(epochs=1, width="auto"), project / "m")
    model, ckpt = model_from_checkpoint(result.checkpoint)
    assert ckpt["model_options"]["width"] == 2.0
    assert [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)] == [64, 128, 256, 512]
    assert "baseline_cnn: channel widths x2 (auto: 2D data)" in caplog.text


def test_loss_decreases_and_the_task_is_learned(project):
    processed = make_processed("pathmnist", samples=72)
    result = train(processed, fast_recipe(epochs=6), project / "m")
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0]
    assert max(h["val_auc"] for h in result.history) > 0.95


def test_best_checkpoint_is_the_best_validation_epoch_not_the_last(project):
    processed = make_processed("pneumoniamnist", samples=48)
    # a high constant lr makes validation AUC move around, so best and last differ often
    result = train(processed, fast_recipe(epochs=6, lr=0.05, schedule="none", monitor="auc", select="best"),
                   project / "m")
    aucs = [h["val_auc"] for h in result.history]
    best = max(range(len(aucs)), key=lambda i: (aucs[i], -i)) + 1  # first epoch reaching the max
    assert result.best_epoch == best
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["epoch"] == best
    # the saved weights reproduce the validation AUC recorded for that epoch
    val = evaluate_checkpoint(result.checkpoint, processed, splits=("val",))["val"]["metrics"]["auc"]
    assert val == pytest.approx(aucs[best - 1], abs=1e-6)


def test_one_se_keeps_the_latest_epoch_within_one_standard_error_of_the_peak(project):
    processed = make_processed("pneumoniamnist", samples=48)
    result = train(processed, fast_recipe(epochs=8, lr=0.05, schedule="none", monitor="auc"), project / "m")
    aucs = [h["val_auc"] for h in result.history]
    peak = max(aucs)
    n_val = len(np.load(processed / "val_labels.npy"))
    floor = peak - math.sqrt(peak * (1 - peak) / n_val)
    kept = result.best_epoch
    assert aucs[kept - 1] >= floor and all(auc < floor for auc in aucs[kept:])
    assert load_checkpoint(result.checkpoint)["epoch"] == kept
    val = evaluate_checkpoint(result.checkpoint, processed, splits=("val",))["val"]["metrics"]["auc"]
    assert val == pytest.approx(aucs[kept - 1], abs=1e-6)
    # a later epoch than the peak, or this run shows nothing `best` would not show
    assert kept > max(range(len(aucs)), key=lambda i: (aucs[i], -i)) + 1


def test_a_monitor_window_keeps_the_epoch_that_ends_the_best_run_of_epochs(project):
    processed = make_processed("pneumoniamnist", samples=48)
    result = train(processed, fast_recipe(epochs=8, lr=0.05, schedule="none", monitor="auc", monitor_window=3,
                                          select="best"), project / "m")
    aucs = [h["val_auc"] for h in result.history]
    means = [sum(aucs[max(0, i - 2):i + 1]) / len(aucs[max(0, i - 2):i + 1]) for i in range(len(aucs))]
    best = max(range(len(means)), key=lambda i: (means[i], -i)) + 1
    assert result.best_epoch == best and load_checkpoint(result.checkpoint)["epoch"] == best
    assert result.best_score == pytest.approx(means[best - 1])
    # a window of one epoch would have kept another epoch here, or the test shows nothing
    assert best != max(range(len(aucs)), key=lambda i: (aucs[i], -i)) + 1


def test_weight_average_is_what_is_validated_and_kept(project):
    processed = make_processed("pneumoniamnist", samples=48)
    result = train(processed, fast_recipe(epochs=4, ema_half_life=1.0, lr=0.01, monitor="auc"), project / "m")
    best, last = load_checkpoint(result.checkpoint), load_checkpoint(project / "m/last.pt")
    assert set(best["model"]) == set(last["model"])  # a plain model's weights, loadable as one
    if best["epoch"] == len(result.history):  # same epoch: the average is not the trained weights
        assert any(not torch.equal(best["model"][k], last["model"][k]) for k in best["model"])
    assert not torch.equal(last["ema"]["module." + next(iter(last["model"]))], next(iter(last["model"].values())))
    val = evaluate_checkpoint(result.checkpoint, processed, splits=("val",))["val"]["metrics"]["auc"]
    assert val == pytest.approx(result.history[result.best_epoch - 1]["val_auc"], abs=1e-6)


def test_early_stopping_stops_after_patience(project):
    processed = make_processed("pneumoniamnist", samples=16)
    result = train(processed, fast_recipe(epochs=30, patience=2, monitor="loss", lr=1e-7), project / "m")
    assert result.stopped_early and len(result.history) < 30
    assert len(result.history) - result.best_epoch == 2


def test_auto_budget_is_resolved_from_the_training_split(project):
    processed = make_processed("pneumoniamnist", samples={"train": 640, "val": 16, "test": 16})
    result = train(processed, fast_recipe(epochs="auto", patience=2, batch_size=8, monitor="acc", lr=1e-9,
                                          select="best"), project / "m")
    assert result.epochs == 25  # 80 steps an epoch: ceil(2000 / 80)
    assert result.patience == 2 and result.stopped_early and len(result.history) < 25


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("ema_half_life", [0.0, 0.5])  # the weight average resumes too
def test_resume_continues_where_it_stopped_and_matches_an_uninterrupted_run(project, ema_half_life):
    processed = make_processed("pathmnist", samples=32)
    cfg = fast_recipe(epochs=4, augment={"enabled": True}, ema_half_life=ema_half_life)
    straight = train(processed, cfg, project / "straight")

    def stop_after_two(epoch, record):
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(processed, cfg, project / "resumed", on_epoch=stop_after_two)
    resumed = train(processed, cfg, project / "resumed")
    assert resumed.resumed_from == 3
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    for a, b in zip(straight.history, resumed.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_auc"] == pytest.approx(b["val_auc"], abs=1e-6)


def test_a_changed_recipe_does_not_resume_an_old_checkpoint(project):
    processed = make_processed("pathmnist", samples=16)
    train(processed, fast_recipe(epochs=2), project / "m")
    again = train(processed, fast_recipe(epochs=2, lr=1e-4), project / "m")
    assert again.resumed_from is None


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_resumes_without_repeating_epochs(project):
    make_processed("pathmnist", samples=96)
    write_params(project / "params.yaml", {"pathmnist": {"source": "custom"}},
                 train={**fast_recipe(epochs=8).model_dump(), "batch_size": 8})
    cmd = [sys.executable, "-m", "medops", "train", "pathmnist", "--out", "run"]
    proc = subprocess.Popen(cmd, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    last = project / "run/last.pt"
    while time.time() < deadline:
        if last.exists() and load_checkpoint(last)["epoch"] >= 2:
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(last)["epoch"]
    assert killed_at < 8, "the run finished before it could be killed"

    rerun = subprocess.run(cmd, cwd=project, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming run from epoch {killed_at + 1}" in rerun.stderr
    history = json.loads((project / "run/metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, 9))


def test_nan_loss_stops_with_a_clear_message_and_keeps_best(project):
    processed = make_processed("pathmnist", samples=32)
    cfg = fast_recipe(epochs=6, optimizer="sgd", lr=1e30, grad_clip=None, schedule="none")
    with pytest.raises(TrainingDiverged, match=r"training loss became (nan|inf) in epoch \d+; stopped") as err:
        train(processed, cfg, project / "m")
    if "kept at" in str(err.value):
        model, ckpt = model_from_checkpoint(project / "m/best.pt")
        assert all(torch.isfinite(p).all() for p in model.parameters())


def test_checkpoint_for_other_architecture_or_classes_is_refused(project):
    processed = make_processed("pathmnist", samples=16)
    result = train(processed, fast_recipe(epochs=1), project / "m")
    ckpt = load_checkpoint(result.checkpoint)
    check_compatible(ckpt, result.checkpoint, "baseline_cnn", InputSpec(3, 9, 28, False))
    with pytest.raises(MedopsError, match="architecture baseline_cnn \\(expected resnet18\\)"):
        check_compatible(ckpt, result.checkpoint, "resnet18", InputSpec(3, 9, 28, False))
    with pytest.raises(MedopsError, match="n_classes 9 \\(expected 4\\)"):
        check_compatible(ckpt, result.checkpoint, "baseline_cnn", InputSpec(3, 4, 28, False))


def test_unreadable_checkpoint(project):
    (project / "x.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MedopsError, match="x.pt: not a readable medops checkpoint"):
        load_checkpoint(project / "x.pt")
    torch.save({"some": torch.zeros(1)}, project / "y.pt")
    with pytest.raises(MedopsError, match="y.pt: not a medops checkpoint"):
        load_checkpoint(project / "y.pt")


def test_cli_train_with_overrides_and_bad_arch(project):
    make_processed("adrenalmnist3d", samples=8)
    write_params(project / "params.yaml", {"adrenalmnist3d": {"source": "custom"}},
                 train=fast_recipe(epochs=1).model_dump())
    bad = subprocess.run([sys.executable, "-m", "medops", "train", "adrenalmnist3d", "--arch", "resnet18"],
                         cwd=project, capture_output=True, text=True)
    assert bad.returncode == 1 and "resnet18 is a 2D model but the data is 3D" in bad.stderr
    assert "Traceback" not in bad.stderr
    typo = subprocess.run([sys.executable, "-m", "medops", "train", "adrenalmnist3d", "--set", "lrr=1"],
                          cwd=project, capture_output=True, text=True)
    assert typo.returncode == 1 and "train.lrr: Extra inputs are not permitted" in typo.stderr
    ok = subprocess.run([sys.executable, "-m", "medops", "train", "adrenalmnist3d", "--arch", "cnn3d",
                         "--set", "batch_size=4", "--set", "augment.enabled=true"],
                        cwd=project, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    summary = json.loads((project / "reports/adrenalmnist3d/cnn3d/metrics.json").read_text())
    assert summary["config"]["batch_size"] == 4 and summary["config"]["augment"]["enabled"] is True
    assert (project / "models/adrenalmnist3d/cnn3d/best.pt").exists()
    assert not math.isnan(summary["test"]["acc"])


def test_width_one_identifies_a_run_as_before_the_width_existed():
    import dataclasses

    from medops.config import TrainParams
    from medops.data.processed import ProcessedMeta
    from medops.training.loop import fingerprint

    meta = ProcessedMeta(flag="breastmnist", size=28, task="binary-class", class_names=["a", "b"], n_channels=1,
                         is_3d=False, mean=[0.5], std=[0.2], class_weights=[1.0, 2.0], source_md5="0" * 32)
    # the fingerprint of the default recipe before train.width was added: studies, checkpoints
    # and registered versions of width-1 recipes keep resuming and matching
    assert fingerprint(TrainParams(width=1), meta) == "35620a13acfb4f58"
    assert fingerprint(TrainParams(), meta) == fingerprint(TrainParams(width=2), meta) != "35620a13acfb4f58"  # auto, 2D
    volumes = dataclasses.replace(meta, is_3d=True)
    assert fingerprint(TrainParams(), volumes) == fingerprint(TrainParams(width=1), volumes)  # auto, 3D
