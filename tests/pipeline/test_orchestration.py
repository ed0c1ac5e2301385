"""Optuna studies, MLflow runs, the Prefect training flow: real components, small data."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import mlflow
import numpy as np
import optuna
import pytest
import torch
from medmnist import INFO
from mlflow import MlflowClient
from optuna.trial import TrialState

from medops import paths
from medops.lifecycle import tracking

from medops.training import tune
from medops.config import MlflowParams, TuneParams, load_params
from medops.data.processed import read_meta, split_size
from medops.errors import ConfigError
from medops.training.loop import fingerprint
from tests.conftest import REPO, fast_recipe, make_processed, write_params

STUDY = "pathmnist-baseline_cnn"


def trials(project):
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{project / 'optuna.db'}")
    return study.get_trials()


def worker(project, n_trials, epochs=2, processes=1):
    return subprocess.Popen([sys.executable, "-m", "tests.study_worker", str(project), str(n_trials), str(epochs),
                             "--processes", str(processes)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# ---- params refused before any training ---------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"experiments": {"breastmnist": {"archs": ["resnet17"]}}}, "unknown architecture 'resnet17'"),
    ({"experiments": {"breastmnist": {"archs": ["cnn3d"]}}}, "cnn3d is a 3D model but the data is 2D"),
    ({"experiments": {"octmnist": {"archs": ["baseline_cnn"]}}}, "experiments.octmnist: not a dataset of data.datasets"),
    ({"tune": {"space": {"learning_rate": {"type": "float", "low": 0.1, "high": 1}}}},
     "'learning_rate' is not a train key; searchable keys: arch, epochs"),
    ({"tune": {"space": {"lr": {"type": "float", "low": 1, "high": 0.1}}}}, "tune.space.lr: float needs low <= high"),
    ({"tune": {"task_space": {"ordinal": {"ordinal_smoothing": {"type": "categorical", "choices": [0.5]}}}}},
     "tune.task_space: 'ordinal' is not a medmnist task type; one of: binary-class, multi-class"),
    ({"tune": {"task_space": {"ordinal-regression": {"smoothing": {"type": "categorical", "choices": [0.5]}}}}},
     "tune.task_space.ordinal-regression: 'smoothing' is not a train key"),
    ({"experiments": {"breastmnist": {"archs": ["baseline_cnn"], "train": {"epochs": "many"}}}},
     r"experiments.breastmnist.train.epochs"),
])
def test_bad_experiment_params_are_refused_with_what_is_valid(tmp_path, change, message):
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(change)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=message):
        load_params(tmp_path / "params.yaml")


def test_search_space_reaches_nested_keys():
    cfg = tune.with_values(fast_recipe(), {"augment.rotation": 20.0, "lr": 0.01})
    assert cfg.augment.rotation == 20.0 and cfg.lr == 0.01


# ---- studies --------------------------------------------------------------------------------

def test_a_task_types_space_is_searched_only_by_studies_of_that_task(project):
    params = TuneParams(n_trials=2, space={"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
                        task_space={"ordinal-regression": {"ordinal_smoothing": {"type": "categorical",
                                                                                 "choices": [0.5, 1.0]}}})
    storage = f"sqlite:///{project / 'optuna.db'}"
    for flag, searched in (("retinamnist", True), ("pathmnist", False)):
        tune.run_study(make_processed(flag, samples=16), fast_recipe(epochs=1), params, f"{flag}-baseline_cnn",
                       storage, project / flag)
        study = optuna.load_study(study_name=f"{flag}-baseline_cnn", storage=storage)
        assert all(("ordinal_smoothing" in t.params) == searched for t in study.trials), flag
        assert all("lr" in t.params for t in study.trials)


@pytest.mark.parametrize("key, dim, auto_means", [
    ("width", {"type": "categorical", "choices": [1, 2]}, 2),  # 2D data
    ("patience", {"type": "int", "low": 2, "high": 20}, 10),  # a third of the epochs, at least 10
    ("epochs", {"type": "categorical", "choices": [2, "steps"]}, "steps"),  # 40 steps at batch 16
    ("epochs", {"type": "categorical", "choices": ["auto", 2]}, "auto"),  # a choice itself: drawn as it is
])
def test_a_searched_auto_starts_from_the_number_auto_means(project, monkeypatch, key, dim, auto_means):
    from medops.training import budget

    monkeypatch.setattr(budget, "TARGET_STEPS", {False: 40, True: 40})  # a few epochs, not the 10-100 bounds
    monkeypatch.setattr(budget, "MIN_EPOCHS", 1)
    processed = make_processed("pathmnist", samples=16)
    if auto_means == "steps":
        auto_means = math.ceil(40 / math.ceil(split_size(processed, "train") / 16))
        dim = {**dim, "choices": [2, auto_means]}
    params = TuneParams(n_trials=2, pruner={"type": "none"}, space={key: dim})
    recipe = fast_recipe(**{"epochs": 1, "patience": 3, key: "auto"})
    tune.run_study(processed, recipe, params, STUDY, f"sqlite:///{project / 'optuna.db'}", project / "trials")
    first, second = trials(project)
    assert first.params == {key: auto_means} and first.user_attrs["recipe_as_written"]
    assert "recipe_as_written" not in second.user_attrs
    if dim["type"] == "categorical":  # trial 1 takes the other choice
        assert second.params[key] != auto_means
    # the study's basis is the recipe with `auto` in it, as before: no existing study starts over
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{project / 'optuna.db'}")
    assert study.user_attrs["basis"] == fingerprint(recipe, read_meta(processed))


def test_a_searched_dropout_left_to_the_architecture_starts_from_its_own(project):
    # improved_cnn's own dropout is 0.3: a recipe that leaves dropout null trains that, so trial
    # 0 must too, or no trial is the recipe as written and tune.min_gain protects nothing
    processed = make_processed("pathmnist", samples=16)
    params = TuneParams(n_trials=2, pruner={"type": "none"}, space={"dropout": {"type": "float", "low": 0.1, "high": 0.5}})
    recipe = fast_recipe(arch="improved_cnn", epochs=1)
    tune.run_study(processed, recipe, params, STUDY, f"sqlite:///{project / 'optuna.db'}", project / "trials")
    first, second = trials(project)
    assert first.params == {"dropout": 0.3} and first.user_attrs["recipe_as_written"]
    assert second.params["dropout"] != 0.3 and "recipe_as_written" not in second.user_attrs
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{project / 'optuna.db'}")
    assert study.user_attrs["basis"] == fingerprint(recipe, read_meta(processed))  # no existing study starts over


@pytest.mark.parametrize("min_gain", [0.0, 1.0])
def test_a_study_starts_from_the_recipe_and_keeps_it_unless_beaten_by_min_gain(project, min_gain):
    processed = make_processed("pathmnist", samples=24)
    params = TuneParams(n_trials=2, min_gain=min_gain, pruner={"type": "none"},
                        space={"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})
    storage = f"sqlite:///{project / 'optuna.db'}"
    result = tune.run_study(processed, fast_recipe(epochs=1), params, STUDY, storage, project / "trials")
    first, second = trials(project)
    assert first.params == {"lr": fast_recipe().lr} and first.user_attrs["recipe_as_written"]
    assert second.params["lr"] != fast_recipe().lr and "recipe_as_written" not in second.user_attrs
    # fast_recipe asks for fp32 and lets the layout be measured: each trial says what it trained in
    assert all(t.user_attrs["precision"] == "fp32" and t.user_attrs["layout"] in ("channels-last", "default")
               for t in (first, second))
    if min_gain == 1.0:  # no validation score beats another by more than 1
        assert result.best_trial == 0
    else:
        assert result.best_value == max(first.value, second.value)


def test_study_is_resumable_and_never_loses_trials(project):
    processed = make_processed("pathmnist", samples=24)
    params = TuneParams(n_trials=2, space={"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})
    storage = f"sqlite:///{project / 'optuna.db'}"
    first = tune.run_study(processed, fast_recipe(epochs=2), params, STUDY, storage, project / "trials")
    assert first.n_complete == 2
    more = params.model_copy(update={"n_trials": 3})
    second = tune.run_study(processed, fast_recipe(epochs=2), more, STUDY, storage, project / "trials")
    numbers = [t.number for t in trials(project)]
    assert numbers == [0, 1, 2] and second.n_complete == 3
    again = tune.run_study(processed, fast_recipe(epochs=2), more, STUDY, storage, project / "trials")
    assert len(trials(project)) == 3 and again.best_trial == second.best_trial


def test_study_run_on_other_data_starts_over(project):
    params = TuneParams(n_trials=1, space={"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})
    storage = f"sqlite:///{project / 'optuna.db'}"
    first = tune.run_study(make_processed("pathmnist", samples=24), fast_recipe(epochs=1), params, STUDY, storage,
                           project / "trials")
    old = torch.load(first.checkpoint, weights_only=True)["fingerprint"]
    changed = make_processed("pathmnist", samples=24, seed=1)  # another file: another md5
    result = tune.run_study(changed, fast_recipe(epochs=1), params, STUDY, storage, project / "trials")
    assert [t.number for t in trials(project)] == [0] and result.n_complete == 1
    assert torch.load(result.checkpoint, weights_only=True)["fingerprint"] != old  # trained anew, not resumed


def test_study_run_with_another_recipe_starts_over(project):
    params = TuneParams(n_trials=2, space={"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})
    storage = f"sqlite:///{project / 'optuna.db'}"
    processed = make_processed("pathmnist", samples=24)
    tune.run_study(processed, fast_recipe(epochs=1), params, STUDY, storage, project / "trials")
    tune.run_study(processed, fast_recipe(epochs=1), params, STUDY, storage, project / "trials")
    assert [t.number for t in trials(project)] == [0, 1]  # same recipe: continued, budget met
    changed = fast_recipe(epochs=1, weight_decay=0.01)  # a key outside the search space
    result = tune.run_study(processed, changed, params, STUDY, storage, project / "trials")
    assert [t.number for t in trials(project)] == [0, 1] and result.n_complete == 2
    meta = read_meta(processed)
    for t in trials(project):  # every trial of the study trained on the changed recipe
        ckpt = torch.load(project / "trials" / t.user_attrs["checkpoint_dir"] / "best.pt", weights_only=True)
        assert ckpt["fingerprint"] == fingerprint(tune.with_values(changed, t.params), meta)
    again = tune.run_study(processed, changed, params, STUDY, storage, project / "trials")
    assert again.best_trial == result.best_trial and len(trials(project)) == 2


def test_a_study_whose_trials_all_fail_reports_their_errors(project):
    processed = make_processed("pathmnist", samples=16)
    diverging = fast_recipe(epochs=4, optimizer="sgd", lr=1e30, grad_clip=None, schedule="none")
    params = TuneParams(n_trials=2, space={"momentum": {"type": "float", "low": 0.8, "high": 0.9}})
    with pytest.raises(tune.StudyFailed, match=r"no trial completed. Errors:\n  trial 0: TrainingDiverged"):
        tune.run_study(processed, diverging, params, STUDY, f"sqlite:///{project / 'optuna.db'}", project / "t")
    assert [t.state for t in trials(project)] == [TrialState.FAIL, TrialState.FAIL]


def test_pruner_stops_poor_trials(project):
    processed = make_processed("pathmnist", samples=32)
    params = TuneParams(n_trials=5, pruner={"n_startup_trials": 1, "n_warmup_steps": 0},
                        space={"lr": {"type": "float", "low": 1e-7, "high": 1e-2, "log": True}})
    result = tune.run_study(processed, fast_recipe(epochs=4), params, STUDY, f"sqlite:///{project / 'optuna.db'}",
                            project / "t")
    assert result.n_complete + result.n_pruned == 5
    assert result.n_pruned >= 1


def second_trial_epoch(project, number=1) -> int:
    """Epoch of the running trial 1's (or `number`'s) last checkpoint (0 while there is none yet)."""
    import torch

    try:
        running = [t for t in trials(project) if t.state == TrialState.RUNNING and t.number == number]
        last = paths.trials_dir("pathmnist", "baseline_cnn") / running[0].user_attrs["checkpoint_dir"] / "last.pt"
        return torch.load(last, weights_only=True)["epoch"]
    except Exception:  # study not created yet, trial not started, checkpoint being replaced
        return 0


@pytest.mark.slow
def test_killed_worker_trial_is_retried_and_resumes_its_checkpoint(project):
    make_processed("pathmnist", samples=96)
    # 10 epochs (the recipe's patience, so none stops early): the kill after epoch 2 lands
    # mid-trial even when the poll runs late on a busy host
    proc = worker(project, n_trials=2, epochs=10)
    deadline = time.time() + 180
    while time.time() < deadline and second_trial_epoch(project) < 2:  # a checkpoint of epoch >= 2
        time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = [t for t in trials(project) if t.number == 1][0]
    assert killed.state == TrialState.RUNNING  # nobody could mark it
    time.sleep(tune.GRACE_SECONDS + tune.HEARTBEAT_SECONDS)

    rerun = worker(project, n_trials=2, epochs=10)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    resumed = re.search(r"resuming \S+ from epoch (\d+)", out)
    assert resumed and 3 <= int(resumed[1]) <= 10, out
    states = {t.number: t.state for t in trials(project)}
    assert states[0] == TrialState.COMPLETE and states[1] == TrialState.FAIL
    retried = [t for t in trials(project) if t.system_attrs.get("failed_trial") == 1]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == killed.params


def _study_record(storage: str, tracking_uri: str) -> list[tuple]:
    """Each trial's number, state, params, value and intermediate values, and the val_loss
    steps of its MLflow run (exactly one run per trial; the loss, unlike the rank-based AUC,
    shows any change in the weights)."""
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("medops/pathmnist").experiment_id],
                              "tags.optuna_trial != ''")
    by_trial = {}
    for run in runs:
        assert run.data.tags["optuna_trial"] not in by_trial  # each trial logged once
        by_trial[run.data.tags["optuna_trial"]] = [
            (m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, "val_loss"), key=lambda m: m.step)]
    study = optuna.load_study(study_name=STUDY, storage=storage)
    return [(t.number, t.state, t.params, t.value, t.intermediate_values, t.user_attrs.get("best_epoch"),
             by_trial[str(t.number)]) for t in study.trials]


def test_first_trials_side_by_side_are_the_trials_in_turn(project):
    """Trials 0 and 1 in two child processes, then trial 2 here (sampled and judged by the
    pruner after them), against the same study in turn on a child's thread count: the same
    samples, scores, per-epoch reports and MLflow epochs, to the bit."""
    processed = make_processed("pathmnist", samples=48)
    space = {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
             "optimizer": {"type": "categorical", "choices": ["adam", "adamw"]}}
    recipe = fast_recipe(epochs=3, optimizer="adam")
    records = {}
    threads = torch.get_num_threads()
    try:
        for processes in (2, 1):
            if processes == 1:
                torch.set_num_threads(max(1, threads // 2))  # what each child ran on
            folder = project / f"processes-{processes}"
            storage, uri = f"sqlite:///{folder / 'optuna.db'}", f"sqlite:///{folder / 'mlflow.db'}"
            folder.mkdir()
            mlflow.set_tracking_uri(uri)  # not tracking.configure: the first store's URI is in the environment now
            tracking.use_experiment(MlflowParams(), "pathmnist")
            params = TuneParams(n_trials=3, processes=processes, space=space,
                                pruner={"type": "median", "n_startup_trials": 2, "n_warmup_steps": 0})
            with mlflow.start_run(run_name="study") as parent:
                tune.run_study(processed, recipe, params, STUDY, storage, folder / "trials",
                               tracking.TrialRuns(parent.info.run_id, {}))
            records[processes] = _study_record(storage, uri)
    finally:
        torch.set_num_threads(threads)
    mlflow.set_tracking_uri(None)
    side, in_turn = records[2], records[1]
    assert [r[0] for r in side] == [0, 1, 2]
    assert side[0][2]["optimizer"] == "adam" and side[1][2]["optimizer"] == "adamw"  # recipe, then the flip
    assert all(len(r[6]) == 3 for r in side[:2])  # every epoch of the side-by-side trials reached MLflow
    assert side == in_turn


def test_a_killed_side_by_side_study_leaves_no_run_training_and_both_trials_resume(project):
    make_processed("pathmnist", samples=384)  # epochs of about a second: the kill lands mid-trial
    proc = worker(project, n_trials=2, epochs=10, processes=2)
    deadline = time.time() + 180
    while time.time() < deadline and min(second_trial_epoch(project, n) for n in (0, 1)) < 2:
        time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = {t.number: t for t in trials(project)}
    assert [t.state for t in killed.values()] == [TrialState.RUNNING, TrialState.RUNNING]
    # the children died with their parent: no trial's last.pt changes any more
    lasts = [paths.trials_dir("pathmnist", "baseline_cnn") / t.user_attrs["checkpoint_dir"] / "last.pt"
             for t in killed.values()]
    before = [p.stat().st_mtime_ns if p.exists() else None for p in lasts]
    time.sleep(tune.GRACE_SECONDS + tune.HEARTBEAT_SECONDS)  # also lets the heartbeats go stale
    assert [p.stat().st_mtime_ns if p.exists() else None for p in lasts] == before

    rerun = worker(project, n_trials=2, epochs=10, processes=2)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    resumed = [int(n) for n in re.findall(r"resuming \S+ from epoch (\d+)", out)]
    assert len(resumed) == 2 and all(2 <= n <= 10 for n in resumed), out
    retried = {t.system_attrs["failed_trial"]: t for t in trials(project) if "failed_trial" in t.system_attrs}
    assert sorted(retried) == [0, 1]
    for number, retry in retried.items():
        assert retry.state == TrialState.COMPLETE and retry.params == killed[number].params
        assert retry.user_attrs["checkpoint_dir"] == killed[number].user_attrs["checkpoint_dir"]


@pytest.mark.slow
def test_two_workers_share_one_study_without_duplicates(project):
    make_processed("pathmnist", samples=24)
    # create both stores once, as a deployment does, so two processes do not race on schema creation
    optuna.create_study(study_name=STUDY, storage=f"sqlite:///{project / 'optuna.db'}", direction="maximize")
    tracking.configure(MlflowParams(tracking_uri=f"sqlite:///{project / 'mlflow.db'}"))
    tracking.use_experiment(MlflowParams(), "pathmnist")
    procs = [worker(project, n_trials=4) for _ in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    done = [t for t in trials(project) if t.state == TrialState.COMPLETE]
    numbers = [t.number for t in trials(project)]
    assert len(numbers) == len(set(numbers))
    assert 4 <= len(done) <= 5  # the budget is met; at most one trial per extra worker beyond it
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["medops/pathmnist"], filter_string="tags.optuna_trial != ''")
    logged = sorted(int(n) for n in runs["tags.optuna_trial"])
    assert logged == sorted(numbers)  # every trial logged once
    finished = runs[runs["tags.trial_state"] == "complete"]
    assert len(finished) == len(done)
    # what each trial ran on, as in its Optuna attributes (fast_recipe pins fp32 and the default layout)
    assert set(finished["tags.device"]) == {"cpu"} and set(finished["tags.precision"]) == {"fp32"}
    assert set(finished["tags.layout"]) == {t.user_attrs["layout"] for t in done}
    mlflow.set_tracking_uri(None)


# ---- the Prefect flow -----------------------------------------------------------------------

@pytest.fixture
def flow_project(project):
    make_processed("pathmnist", samples=24)
    make_processed("chestmnist", samples=24)
    write_params(
        project / "params.yaml",
        {"pathmnist": {"source": "custom"}, "chestmnist": {"source": "custom"}},
        train=fast_recipe(epochs=2).model_dump(),
        experiments={"pathmnist": {"archs": ["baseline_cnn"]},
                     "chestmnist": {"archs": ["baseline_cnn"],  # every trial of this one diverges
                                    "train": {"optimizer": "sgd", "lr": 1e30, "grad_clip": None, "schedule": "none"}}},
        tune={"n_trials": 2, "pruner": {"type": "none"},
              "space": {"weight_decay": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}}},
        mlflow={"tracking_uri": f"sqlite:///{project / 'mlruns/mlflow.db'}"},
        # 24 validation images: one changed prediction moves ACC by 0.04, hence these tolerances;
        # QAT has its own tests (tests/model) and would add 45 s here
        quantize={"seconds": 0.1, "max_auc_drop": 0.02, "max_acc_drop": 0.05, "qat_epochs": 0}, report={"seeds": 2},
    )
    return project


@pytest.mark.slow
def test_training_flow_registers_promotes_and_survives_a_failed_study(flow_project):
    prefect_home = {**os.environ, "PREFECT_HOME": str(flow_project / "prefect-home"),  # its artifacts alone
                    "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}  # this study lasts seconds, not minutes
    proc = subprocess.run([sys.executable, "-m", "flows.training"], cwd=flow_project, capture_output=True, text=True,
                          env=prefect_home)
    assert proc.returncode == 1
    assert "chestmnist/baseline_cnn" in proc.stderr and "TrainingDiverged" in proc.stderr

    mlflow.set_tracking_uri(f"sqlite:///{flow_project / 'mlruns/mlflow.db'}")
    client = MlflowClient()
    champion = client.get_model_version_by_alias("pathmnist-classifier", "champion")
    assert champion.tags["arch"] == "baseline_cnn" and float(champion.tags["test_auc"]) > 0
    assert not client.search_model_versions("name='chestmnist-classifier'")  # nothing half-registered
    model = mlflow.pyfunc.load_model("models:/pathmnist-classifier@champion")
    x = np.load(flow_project / "data/raw/pathmnist.npz")["test_images"][:3]
    table = model.predict(x)
    probs = table.filter(like="p_").to_numpy()
    assert probs.shape == (3, 9) and np.allclose(probs.sum(1), 1, atol=1e-5)
    names = INFO["pathmnist"]["label"]
    assert list(table.class_name) == [names[str(i)] for i in probs.argmax(1)]

    # whether an int8 twin is registered hangs on its timing against fp32 ONNX Runtime on this busy
    # host; what it must do is follow the recorded decision, and only speed may keep static int8 out
    quantized = json.loads((flow_project / "models/pathmnist/baseline_cnn/stages/quantize.json").read_text())
    report = quantized["result"]["report"]
    assert "int8 static: validation" not in report["reason"]
    if report["best_int8"] is None:
        assert not client.search_registered_models("name='pathmnist-classifier-int8'")
        # static int8 left out for its speed: at batch 256, or already at the batch-32 screen
        static = report["reason"].split("int8 static: ")[1]
        assert re.match(r"\d+ img/s(, not faster than| at batch 32, under 0\.6x) fp32 ONNX Runtime", static), static
    else:
        int8 = client.get_model_version_by_alias("pathmnist-classifier-int8", "champion")  # follows fp32's champion
        assert int8.tags["fp32_version"] == str(champion.version) and abs(float(int8.tags["delta_auc"])) <= 0.01
        int8_uri = "models:/pathmnist-classifier-int8@champion"
        assert mlflow.models.get_model_info(int8_uri).flavors["onnx"]["providers"] == ["CPUExecutionProvider"]
        onnx_probs = mlflow.pyfunc.load_model(int8_uri).predict(x)
        assert np.abs(np.asarray(onnx_probs["probabilities"]) - probs).max() < 0.1  # int8 stays close to fp32

    card = (flow_project / "reports/pathmnist/model_card.md").read_text()
    for section in ("## Data", "## baseline_cnn", "2 seeds (mean +- std)", "MedMNIST v2", "Grad-CAM",
                    "### Quantization", "int8 static", "## Lineage", "## Known limits"):
        assert section in card, section
    ran_on = json.loads((flow_project / "reports/pathmnist/training/baseline_cnn/metrics.json").read_text())["ran_on"]
    assert ran_on["device"] == "cpu" and ran_on["precision"] in ("fp32", "bf16"), ran_on
    assert f"Trained on cpu in {ran_on['precision']}, {ran_on['layout']} layout" in card
    assert (flow_project / "reports/pathmnist/training/baseline_cnn/gradcam.png").exists()
    assert "model_card/model_card.md" in champion.description
    artifacts = [a.path for a in client.list_artifacts(champion.run_id, "model_card")]
    assert "model_card/model_card.md" in artifacts

    parent = mlflow.search_runs(experiment_names=["medops/pathmnist"], filter_string="tags.kind = 'study'")
    assert len(parent) == 1
    children = mlflow.search_runs(experiment_names=["medops/pathmnist"],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.run_id[0]}'")
    assert len(children) == 2 and "metrics.val_auc" in children
    lineage = parent.iloc[0]
    assert lineage["tags.git_commit"] and lineage["tags.dataset_md5"] == "custom"
    assert lineage["metrics.system/cpu_utilization_percentage"] >= 0  # MLflow system metrics of the study run
    registered = client.get_registered_model("pathmnist-classifier")  # described in the registry's list too
    assert "multi-class task, 9 classes" in registered.description and "uint8 (N, 28, 28, 3)" in registered.description
    assert registered.tags["task"] == "multi-class" and registered.tags["flag"] == "pathmnist"

    summary = json.loads((flow_project / "reports/pathmnist/training.json").read_text())
    assert summary["baseline_cnn"]["version"] == int(champion.version) and summary["champion_version"] == 1
    assert (flow_project / "reports/pathmnist/training/baseline_cnn/roc_test.png").exists()
    mlflow.set_tracking_uri(None)

    # the flow run's results in Prefect itself (its Prefect home keeps the temporary server's database)
    listed = subprocess.run(["prefect", "artifact", "ls"], cwd=flow_project, capture_output=True, text=True,
                            env={**prefect_home, "COLUMNS": "300"})
    assert listed.returncode == 0, listed.stderr
    for key in ("study-pathmnist-baseline-cnn", "promotion-pathmnist", "model-card-pathmnist"):
        assert key in listed.stdout, listed.stdout
    assert "promotion-chestmnist" not in listed.stdout  # its only study failed: nothing to decide


@pytest.mark.slow
def test_a_multi_label_set_goes_through_the_flow_to_a_served_champion(project):
    """The one task type no other test takes through the whole flow: tune, seeds, evaluate,
    Grad-CAM, int8, register and promote a 14-label set, then serve it (a probability per label)."""
    make_processed("chestmnist", samples=48)
    write_params(project / "params.yaml", {"chestmnist": {"source": "custom"}},
                 train=fast_recipe(epochs=2).model_dump(), experiments={"chestmnist": {"archs": ["baseline_cnn"]}},
                 tune={"n_trials": 1, "pruner": {"type": "none"}},
                 mlflow={"tracking_uri": f"sqlite:///{project / 'mlruns/mlflow.db'}"},
                 quantize={"seconds": 0.1, "max_auc_drop": 0.05, "max_acc_drop": 0.1, "qat_epochs": 0},
                 report={"seeds": 2})
    proc = subprocess.run([sys.executable, "-m", "flows.training"], cwd=project, capture_output=True, text=True,
                          env={**os.environ, "PREFECT_HOME": str(project / "prefect-home")})
    assert proc.returncode == 0, proc.stderr[-3000:]

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns/mlflow.db'}")
    try:
        table = mlflow.pyfunc.load_model("models:/chestmnist-classifier@champion").predict(
            np.load(project / "data/raw/chestmnist.npz")["test_images"][:6])
    finally:
        mlflow.set_tracking_uri(None)
    probs = table.filter(like="p_").to_numpy()
    assert probs.shape == (6, 14) and not np.allclose(probs.sum(1), 1)  # per label, not a distribution
    names = INFO["chestmnist"]["label"]
    assert list(table.class_name) == [";".join(names[str(i)] for i in np.flatnonzero(p > 0.5)) for p in probs]
    card = (project / "reports/chestmnist/model_card.md").read_text()
    assert "score > 0.5 (MedMNIST's ACC rule)" in card and "### Quantization" in card
    assert (project / "reports/chestmnist/training/baseline_cnn/gradcam.png").exists()
