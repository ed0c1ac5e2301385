"""Tests leave the user's homes alone: Prefect, MLflow and DVC point under this session's
temporary folder (tests/conftest.py sets them before anything is imported)."""

import os
from pathlib import Path

import mlflow
from prefect.settings import get_current_settings

from tests.conftest import TEST_HOMES


def _under(path, root: Path) -> bool:
    return Path(path).expanduser().resolve().is_relative_to(root.resolve())


def test_prefect_home_database_and_profile_are_the_sessions_own():
    settings = get_current_settings()
    assert _under(settings.home, TEST_HOMES)
    assert _under(settings.profiles_path, TEST_HOMES)
    url = settings.server.database.connection_url.get_secret_value()
    assert url.startswith("sqlite") and _under(url.split(":///", 1)[1], TEST_HOMES), url
    assert settings.api.url is None  # no server from the user's shell or profile: a temporary one


def test_no_tracking_server_or_dvc_home_of_the_user_is_reachable(tmp_path, monkeypatch):
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    monkeypatch.chdir(tmp_path)  # MLflow's own default is then this test's folder, as in every test
    assert _under(mlflow.get_tracking_uri().removeprefix("file://"), tmp_path)
    assert _under(os.environ["DVC_SITE_CACHE_DIR"], TEST_HOMES)
    assert _under(os.environ["DVC_GLOBAL_CONFIG_DIR"], TEST_HOMES)
