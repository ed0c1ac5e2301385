import pytest
import yaml

from medops.config import load_params, parse_settings, with_dotted
from medops.errors import ConfigError
from medops.training.models.catalog import DEFAULT_ARCH
from tests.conftest import REPO, write_params


def test_repository_params_load():
    params = load_params(REPO / "params.yaml")
    assert set(params.data.datasets) == {"breastmnist", "pneumoniamnist", "adrenalmnist3d"}


def test_a_set_listed_by_name_only_trains_the_default_architecture(tmp_path):
    # params.yaml's train.arch and DEFAULT_ARCH agree, so the README's by-name figures are this model's
    names = {"pathmnist": {}, "organmnist3d": {}}
    params = load_params(write_params(tmp_path / "params.yaml", names, experiments=names))
    assert params.archs("pathmnist") == [DEFAULT_ARCH[False]] == ["baseline_cnn_pool_first"]
    assert params.archs("organmnist3d") == [DEFAULT_ARCH[True]] == ["cnn3d_pool_first"]


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


def test_the_gpu_profile_is_merged_over_params(tmp_path):
    """The repository's params.yaml with `profile: gpu` picks up params-gpu.yaml: its train section,
    its budgets, and its experiments entries whole (no CPU recipe value leaks in)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["profile"] is None  # the default run is the CPU profile
    cpu = load_params(REPO / "params.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**params, "profile": "gpu"}))
    (tmp_path / "params-gpu.yaml").write_text((REPO / "params-gpu.yaml").read_text())
    gpu = load_params(tmp_path / "params.yaml")
    assert (gpu.train.device, gpu.train.arch, gpu.tune.n_trials) == ("cuda", "resnet18", 30)
    assert gpu.data == cpu.data and gpu.validation == cpu.validation  # data sections stay params.yaml's
    assert set(gpu.experiments) == set(cpu.experiments)  # octmnist's GPU recipe waits for params.yaml
    assert "resnet50" in gpu.archs("breastmnist")
    assert cpu.recipe("breastmnist", "improved_cnn").epochs == 60
    assert gpu.recipe("breastmnist", "improved_cnn").epochs == 100  # the CPU entry's 60 does not leak
    for recipe in (cpu.recipe("pneumoniamnist", "baseline_cnn"), gpu.recipe("pneumoniamnist", "resnet18")):
        # every image moved, none mirrored: restated in the GPU profile, since its entry replaces the CPU one
        assert (recipe.augment.affine_p, recipe.augment.hflip) == (1.0, 0.0)
    assert set(cpu.tune.space) < set(gpu.tune.space)  # nested keys merge


@pytest.mark.parametrize("overlay, message", [
    (None, r"params\.yaml: profile 'gpu' needs .*params-gpu\.yaml, which does not exist"),
    ({"data": {"mirror": "/x"}}, r"params-gpu\.yaml: data: a profile sets only train, experiments"),
    ({"train": {"epochs": -1}}, r"(?s)params\.yaml with .*params-gpu\.yaml: .*train\.epochs"),
])
def test_a_bad_profile_names_its_file(tmp_path, overlay, message):
    path = write_params(tmp_path / "params.yaml", {"breastmnist": {}}, profile="gpu")
    if overlay is not None:
        (tmp_path / "params-gpu.yaml").write_text(yaml.safe_dump(overlay))
    with pytest.raises(ConfigError, match=message):
        load_params(path)


def test_a_set_whose_classes_name_a_side_is_never_mirrored_unless_it_asks(tmp_path):
    datasets = {"organamnist": {}, "organmnist3d": {}, "dermamnist": {}, "organcmnist": {}}
    experiments = {flag: {} for flag in datasets}
    experiments["organcmnist"] = {"train": {"augment": {"hflip": 0.3}}}  # set for this dataset: kept
    path = write_params(tmp_path / "params.yaml", datasets, experiments=experiments,
                        train={**yaml.safe_load((REPO / "params.yaml").read_text())["train"],
                               "augment": {"hflip": 0.5, "vflip": 0.2}})
    params = load_params(path)
    flips = {flag: (params.recipe(flag, arch).augment.hflip, params.recipe(flag, arch).augment.vflip)
             for flag, arch in (("organamnist", "baseline_cnn"), ("organmnist3d", "cnn3d"),
                                ("dermamnist", "baseline_cnn"), ("organcmnist", "baseline_cnn"))}
    assert flips == {"organamnist": (0.0, 0.0), "organmnist3d": (0.0, 0.0), "dermamnist": (0.5, 0.2),
                     "organcmnist": (0.3, 0.0)}
    assert params.recipe("organamnist", "baseline_cnn").augment.rotation == params.train.augment.rotation
    assert params.train.augment.rot90 and not params.recipe("organmnist3d", "cnn3d").augment.rot90
    assert params.recipe("dermamnist", "baseline_cnn").augment.rot90


def test_settings_reach_nested_keys_and_leave_their_siblings():
    settings = parse_settings(["train.augment.rotation=15", "lr=0.0003", "augment.enabled=false", "note=a=b"])
    assert settings == {"augment.rotation": 15, "lr": 0.0003, "augment.enabled": False, "note": "a=b"}
    section = with_dotted({"lr": 0.001, "augment": {"rotation": 0, "hflip": 0.5, "enabled": True}}, settings)
    assert section == {"lr": 0.0003, "note": "a=b", "augment": {"rotation": 15, "hflip": 0.5, "enabled": False}}


@pytest.mark.parametrize("item", ["lr", "=3"])
def test_a_setting_without_key_or_value_is_refused_by_name(item):
    with pytest.raises(ConfigError, match=f"--set expects key=value, got '{item}'"):
        parse_settings([item])
