import pytest

from medops.config import load_params
from medops.errors import ConfigError
from tests.conftest import REPO, write_params


def test_repository_params_load():
    params = load_params(REPO / "params.yaml")
    assert set(params.data.datasets) == {"breastmnist", "pneumoniamnist", "adrenalmnist3d"}


def test_typo_in_a_key_is_named(tmp_path):
    path = write_params(tmp_path / "params.yaml", {"breastmnist": {"sise": 28}})
    with pytest.raises(ConfigError, match=r"data\.datasets\.breastmnist\.sise: Extra inputs"):
        load_params(path)


def test_unknown_dataset_is_refused_before_work(tmp_path):
    path = write_params(tmp_path / "params.yaml", {"fakemnist": {}})
    with pytest.raises(ConfigError, match="unknown MedMNIST flag 'fakemnist'"):
        load_params(path)


def test_wrong_type_is_named(tmp_path):
    path = write_params(tmp_path / "params.yaml", {"breastmnist": {"size": "big"}})
    with pytest.raises(ConfigError, match=r"data\.datasets\.breastmnist\.size.*'big'"):
        load_params(path)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_mirror_env_overrides_params(tmp_path, monkeypatch):
    path = write_params(tmp_path / "params.yaml", {"breastmnist": {}}, mirror=tmp_path / "a")
    monkeypatch.setenv("MEDOPS_MIRROR", str(tmp_path / "b"))
    assert load_params(path).data.mirror_dir() == tmp_path / "b"


@pytest.mark.parametrize("datasets, message", [
    ({"../../etc/passwd": {}}, r"unknown MedMNIST flag '../../etc/passwd'"),
    ({"breastmnist": {"size": 32}}, r"size 32 is not published for breastmnist; available sizes: 28, 64"),
])
def test_flags_that_leave_the_data_folder_and_unknown_sizes_are_refused(tmp_path, datasets, message):
    with pytest.raises(ConfigError, match=message):
        load_params(write_params(tmp_path / "params.yaml", datasets))


def test_a_command_line_flag_cannot_name_a_path(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from medops.cli import app

    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", {"breastmnist": {}})
    result = CliRunner().invoke(app, ["data", "download", "../outside"])
    assert result.exit_code == 1 and "dataset '../outside' is not listed under data.datasets" in result.output
    assert not (tmp_path.parent / "outside.npz").exists() and not (tmp_path / "data").exists()
