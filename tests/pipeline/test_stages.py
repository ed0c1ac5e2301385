"""The training flow's stages as named Prefect tasks: a failed late stage is rerun from where it
failed, and running the same flow again registers nothing new."""

import time

import mlflow
import pytest
from mlflow import MlflowClient

from tests.conftest import fast_recipe, make_processed, write_params

FLAG, ARCH = "pneumoniamnist", "baseline_cnn"
EARLY = ("tune", "seeds", "evaluate", "explain")


def _task_runs(flow_state, expected: set[str]) -> dict[str, str]:
    """Task name -> state name of one flow run, as the Prefect API records them. Task run states
    reach the database through events, a moment after the flow returns: wait until every
    expected task is there in a final state."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_filter = FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id]))
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while True:
            runs = {r.name: r.state for r in client.read_task_runs(flow_run_filter=flow_filter)}
            if (expected <= set(runs) and all(state is not None and state.is_final() for state in runs.values())) \
                    or time.monotonic() > deadline:
                return {name: state.name if state else "None" for name, state in runs.items()}
            time.sleep(0.5)


def _run_logs(flow_state, last_task: str) -> dict[str, str]:
    """Task run name -> the log lines the Prefect API holds for it, for one flow run; polled
    until `last_task` has some (logs reach the API in batches, after the run)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # the batches still queued in this process
    flow_run_id = flow_state.state_details.flow_run_id
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        names = {r.id: r.name for r in client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))}
        while True:
            lines: dict[str, str] = {}
            for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200):
                key = names.get(log.task_run_id, "flow")
                lines[key] = lines.get(key, "") + log.message + "\n"
            if last_task in lines or time.monotonic() > deadline:
                return lines
            time.sleep(0.5)


@pytest.fixture
def prefect_server():
    """The temporary Prefect server the flows of this test start in its own process, stopped when
    the test ends: left to interpreter exit, its last log line goes to streams pytest has closed."""
    yield
    from prefect.logging.handlers import APILogHandler
    from prefect.server.api.server import SubprocessASGIServer

    APILogHandler().flush()  # the flows' last logs reach it before it goes
    SubprocessASGIServer().stop()  # the process-wide one a flow started (a no-op if none did)


@pytest.mark.slow
def test_a_failed_quantize_reruns_from_quantize_and_a_rerun_registers_nothing(project, prefect_server):
    from flows.training import training_flow

    make_processed(FLAG, samples={"train": 120, "val": 60, "test": 60})
    write_params(project / "params.yaml", {FLAG: {"source": "custom"}}, train=fast_recipe(epochs=1).model_dump(),
                 experiments={FLAG: {"archs": [ARCH]}},
                 tune={"n_trials": 1, "pruner": {"type": "none"},
                       "space": {"lr": {"type": "float", "low": 1e-3, "high": 3e-3}}},
                 mlflow={"tracking_uri": f"sqlite:///{project / 'mlruns/mlflow.db'}"},
                 quantize={"seconds": 0.05, "calibration_size": 32, "qat_epochs": 0}, report={"seeds": 2})
    stages = project / "models" / FLAG / ARCH / "stages"
    blocker = project / "models" / FLAG / ARCH / "quantized"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where quantize writes its folder")

    failed = training_flow(params_path="params.yaml", return_state=True)
    assert failed.is_failed()
    runs = _task_runs(failed, {f"{s}-{FLAG}-{ARCH}" for s in (*EARLY, "quantize")})
    assert {runs[f"{s}-{FLAG}-{ARCH}"] for s in EARLY} == {"Completed"}
    assert runs[f"quantize-{FLAG}-{ARCH}"] == "Failed" and f"register-{FLAG}-{ARCH}" not in runs
    assert sorted(p.stem for p in stages.glob("*.json")) == sorted(EARLY)
    before = {p.name: p.stat().st_mtime_ns for p in (project / "models").rglob("*.pt")}
    records = {s: (stages / f"{s}.json").read_bytes() for s in EARLY}

    blocker.unlink()
    fixed = training_flow(params_path="params.yaml", return_state=True)
    assert fixed.is_completed()
    runs = _task_runs(fixed, {f"{s}-{FLAG}-{ARCH}" for s in (*EARLY, "quantize", "register")}
                      | {f"promote-{FLAG}", f"model-card-{FLAG}"})
    assert {runs[f"{s}-{FLAG}-{ARCH}"] for s in (*EARLY, "quantize", "register")} == {"Completed"}
    assert {runs[f"promote-{FLAG}"], runs[f"model-card-{FLAG}"]} == {"Completed"}
    # nothing before quantize ran again: no checkpoint rewritten, every earlier record as it was
    assert {p.name: p.stat().st_mtime_ns for p in (project / "models").rglob("*.pt")} == before
    assert {s: (stages / f"{s}.json").read_bytes() for s in EARLY} == records
    assert (stages / "quantize.json").exists()
    # medops progress reaches the Prefect UI, on the task run that made it
    logged = _run_logs(fixed, f"register-{FLAG}-{ARCH}")
    reused = f"{FLAG}/{ARCH}: tune unchanged since its last run: reusing its result"
    assert reused in logged.get(f"tune-{FLAG}-{ARCH}", "")
    assert f"registered {FLAG}-classifier v1" in logged.get(f"register-{FLAG}-{ARCH}", "")

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns/mlflow.db'}")
    try:
        client = MlflowClient()
        versions = client.search_model_versions(f"name='{FLAG}-classifier'")
        assert len(versions) == 1 and versions[0].tags["build_key"]
        described = client.get_registered_model(f"{FLAG}-classifier").description
        client.update_registered_model(f"{FLAG}-classifier", description="written by an older release")
        assert training_flow(params_path="params.yaml", return_state=True).is_completed()
        assert len(client.search_model_versions(f"name='{FLAG}-classifier'")) == 1  # the same build: no new version
        assert client.get_registered_model(f"{FLAG}-classifier").description == described  # brought up to date
        assert client.get_model_version_by_alias(f"{FLAG}-classifier", "champion").version == versions[0].version
    finally:
        mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_a_study_finished_on_one_host_is_reused_on_another_through_the_store(tmp_path, monkeypatch, caplog):
    """Two checkouts stand for two hosts sharing the Optuna and MLflow stores and the checkpoint
    store: the second finishes the study from what the first recorded, training nothing."""
    from medops import pipeline
    from medops.config import load_params

    store = tmp_path / "store"
    hosts = [tmp_path / "host-a", tmp_path / "host-b"]
    for host in hosts:
        host.mkdir()
        monkeypatch.chdir(host)
        make_processed(FLAG, samples={"train": 120, "val": 60, "test": 60})  # the same data on both
        write_params(host / "params.yaml", {FLAG: {"source": "custom"}}, train=fast_recipe(epochs=1).model_dump(),
                     experiments={FLAG: {"archs": [ARCH]}},
                     tune={"n_trials": 1, "pruner": {"type": "none"}, "storage": f"sqlite:///{tmp_path / 'optuna.db'}",
                           "space": {"lr": {"type": "float", "low": 1e-3, "high": 3e-3}}},
                     mlflow={"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
                     orchestration={"checkpoint_store": store.as_uri()},
                     quantize={"seconds": 0.05, "calibration_size": 32, "qat_epochs": 0}, report={"seeds": 2})

    def stages_before_register():
        params = load_params("params.yaml")
        tuned = pipeline.tune(FLAG, ARCH, params)
        seeded = pipeline.seeds(FLAG, ARCH, params, tuned)
        evaluated = pipeline.evaluate(FLAG, ARCH, params, tuned, seeded)
        return params, [tuned, seeded, evaluated, pipeline.explain(FLAG, ARCH, params, tuned),
                        pipeline.quantize(FLAG, ARCH, params, evaluated)]

    monkeypatch.chdir(hosts[0])
    _, first = stages_before_register()
    monkeypatch.chdir(hosts[1])
    caplog.set_level("INFO")
    params, second = stages_before_register()
    assert second == first
    assert sum("reusing its result" in r.getMessage() for r in caplog.records) == 5  # every stage
    assert not list((hosts[1] / "models").rglob("last.pt"))  # nothing trained on this host
    files = [f for result in second for f in result["files"]]
    assert len(files) >= 5 and all((hosts[1] / f).exists() for f in files)  # checkpoints, plots, Grad-CAM
    assert len(list((hosts[1] / "models").rglob("seeds/**/best.pt"))) == 1  # the second seed's run

    summary = pipeline.register(FLAG, ARCH, params, *second)
    assert str(summary["registered_version"]) == "1"  # the first version, made on the second host
    published = hosts[1] / "reports" / FLAG / "training" / ARCH
    assert {"gradcam.png", "metrics.json"} <= {p.name for p in published.iterdir()}
