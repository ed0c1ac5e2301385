"""The data stages through real DVC: repro, no-op repro, per-dataset reruns, failures."""

import json
import subprocess
import time

import numpy as np
import pytest

from medops.data.synth import write_synthetic
from tests.conftest import snapshot, write_params

pytestmark = pytest.mark.slow


def sh(*args, cwd, check=True):
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.fixture
def dvc_project(project, official_mirror, copy_repo_files, prefect_api):
    copy_repo_files(project, "dvc.yaml", "src", "flows", "tasks")
    mirror = project / "mirror"
    mirror.mkdir()
    (mirror / "breastmnist.npz").symlink_to(official_mirror / "breastmnist.npz")
    write_synthetic("dermamnist", 28, 24, mirror)
    write_synthetic("dermamnist", 64, 24, mirror)  # for a change of size
    write_params(
        project / "params.yaml",
        {"breastmnist": {"size": 28}, "dermamnist": {"size": 28, "source": "custom"}},
        mirror=mirror,
        experiments={"dermamnist": {"archs": ["baseline_cnn"], "train": {"epochs": 1, "batch_size": 16}}},
        tune={"n_trials": 1, "space": {"lr": {"type": "float", "low": 0.001, "high": 0.003}}},
        # int8 and seed runs have tests of their own; here they would only add minutes
        quantize={"enabled": False}, report={"seeds": 1},
    )
    (project / "params-gpu.yaml").write_text("tune: {n_trials: 2}\n")  # a profile, as params-gpu.yaml is one
    sh("git", "init", "-q", cwd=project)
    sh("dvc", "init", "-q", cwd=project)
    sh("dvc", "config", "core.analytics", "false", cwd=project)
    return project


def test_repro_builds_everything_then_nothing_then_only_what_changed(dvc_project):
    running = subprocess.Popen(["dvc", "repro"], cwd=dvc_project, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 120
    while not (dvc_project / "data/raw").exists():  # a stage is running: the repro holds DVC's lock
        assert running.poll() is None and time.time() < deadline, running.communicate()
        time.sleep(0.2)
    second = sh("dvc", "repro", cwd=dvc_project, check=False)  # started twice at once: refused
    refused = second.stderr + second.stdout  # DVC's repo lock, or its per-output lock once stages run
    assert second.returncode != 0 and ("Unable to acquire lock" in refused or "rwlock" in refused), refused
    stdout, stderr = running.communicate(timeout=1200)
    assert running.returncode == 0, stdout + stderr
    first = subprocess.CompletedProcess(running.args, 0, stdout, stderr)
    stages = {f"{s}@{d}" for s in ("download", "validate", "preprocess", "eda") for d in ("breastmnist", "dermamnist")}
    assert ran(first.stdout) == stages | {"train@dermamnist", "report"}
    assert "dermamnist | baseline_cnn" in (dvc_project / "reports/summary.md").read_text()

    for flag in ("breastmnist", "dermamnist"):
        assert json.loads((dvc_project / f"reports/{flag}/validation/result.json").read_text())["success"]
        assert (dvc_project / f"data/processed/{flag}/train_images.npy").exists()
        assert (dvc_project / f"reports/{flag}/eda/samples.png").exists()

    again = sh("dvc", "repro", cwd=dvc_project)
    assert ran(again.stdout) == set() and "up to date" in again.stdout
    # validation rebuilt (new Data Docs pages, the same verdict): nothing downstream goes stale
    sh("dvc", "repro", "-f", "-s", "validate@breastmnist", cwd=dvc_project)
    assert json.loads(sh("dvc", "status", "--json", cwd=dvc_project).stdout) == {}

    plots = json.loads(sh("dvc", "plots", "show", "--json", cwd=dvc_project).stdout)
    shown = set(plots["data"])
    assert "reports/breastmnist/eda/samples.png" in shown and "reports/dermamnist/eda/class_distribution.png" in shown
    assert not plots.get("errors"), plots["errors"]  # every declared plot loads
    for data in ("history/baseline_cnn_val_auc.csv", "roc/baseline_cnn_", "confusion/baseline_cnn.csv"):
        assert any(p.startswith(f"reports/dermamnist/plots/{data}") for p in shown), sorted(shown)  # data, not only PNGs

    metrics = json.dumps(json.loads(sh("dvc", "metrics", "show", "--json", cwd=dvc_project).stdout))
    assert "reports/breastmnist/data_stats.json" in metrics and "reports/dermamnist/training.json" in metrics

    # experiments: another parameter profile as a DVC experiment reruns training only, on the
    # profile's budget (2 trials; the study resumes from the baseline's one)
    sh("git", "add", "-A", cwd=dvc_project)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline", cwd=dvc_project)
    exp = sh("dvc", "exp", "run", "-S", "profile=gpu", cwd=dvc_project)
    assert ran(exp.stdout) == {"train@dermamnist", "report"}
    assert "study dermamnist-baseline_cnn: 1 of 2 trials finished" in exp.stderr + exp.stdout  # resumed
    shown = json.dumps(json.loads(sh("dvc", "exp", "show", "--json", cwd=dvc_project).stdout))
    assert '"profile": "gpu"' in shown and '"test_auc"' in shown and '"val_acc"' in shown
    history = "reports/dermamnist/plots/history/baseline_cnn_val_auc.csv"
    diff = json.loads(sh("dvc", "plots", "diff", "HEAD", "--json", "--targets", history, cwd=dvc_project).stdout)
    assert not diff.get("errors"), diff["errors"]
    revisions = {rev for plot in diff["data"][history] for rev in plot["revisions"]}
    assert revisions == {"HEAD", "workspace"}  # the baseline and the experiment on one chart

    # a change to one dataset's data settings reruns that dataset's stages only (its training too,
    # stale now; run above and in the experiment, so not a third time here)
    params = (dvc_project / "params.yaml").read_text()
    (dvc_project / "params.yaml").write_text(params.replace("size: 28\n      source: custom",
                                                            "size: 64\n      source: custom"))
    changed = sh("dvc", "repro", "eda@dermamnist", cwd=dvc_project)
    assert "preprocess@dermamnist" in ran(changed.stdout)
    meta = json.loads((dvc_project / "data/processed/dermamnist/meta.json").read_text())
    assert meta["size"] == 64
    stale = json.loads(sh("dvc", "status", "--json", cwd=dvc_project).stdout)
    assert set(stale) == {"train@dermamnist"}, stale  # nothing of breastmnist


DERMA_STAGES = ("dvc", "repro", "eda@dermamnist")  # one dataset's data stages and nothing downstream


def test_bad_data_stops_the_pipeline_and_keeps_last_good_outputs(dvc_project):
    sh(*DERMA_STAGES, cwd=dvc_project)
    kept = snapshot(dvc_project / "data/processed", dvc_project / "reports")

    # the custom file turns bad: a third of the test split copies training images
    path = dvc_project / "mirror/dermamnist.npz"
    arrays = dict(np.load(path))
    arrays["test_images"][:8] = arrays["train_images"][:8]
    np.savez(path, **arrays)
    proc = sh("dvc", "repro", "-f", "download@dermamnist", cwd=dvc_project, check=False)
    assert proc.returncode == 0  # download itself is fine: the file is a complete npz
    proc = sh(*DERMA_STAGES, cwd=dvc_project, check=False)
    assert proc.returncode != 0
    assert "leakage) [test]" in proc.stderr
    assert "preprocess@dermamnist" not in ran(proc.stdout)
    after = snapshot(dvc_project / "data/processed", dvc_project / "reports")
    assert {k: v for k, v in after.items() if "validation-failed" not in k} == kept
    assert (dvc_project / "reports/dermamnist/validation-failed/report.md").exists()


def test_wrong_md5_in_mirror_fails_download_and_keeps_raw_file(dvc_project):
    sh("dvc", "repro", "download@breastmnist", cwd=dvc_project)
    kept = snapshot(dvc_project / "data", dvc_project / "reports")
    mirror_file = dvc_project / "mirror/breastmnist.npz"
    data = mirror_file.read_bytes()
    mirror_file.unlink()
    mirror_file.write_bytes(data[:-10] + b"0123456789")
    proc = sh("dvc", "repro", "-f", "download@breastmnist", cwd=dvc_project, check=False)
    assert proc.returncode != 0
    assert "does not match the official breastmnist.npz" in proc.stderr
    assert snapshot(dvc_project / "data", dvc_project / "reports") == kept
