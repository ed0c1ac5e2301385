import pytest
from medmnist import INFO

from medops.data.info import resolve
from medops.errors import ConfigError


@pytest.mark.parametrize("flag", sorted(INFO))
def test_every_info_flag_resolves_at_every_published_size(flag):
    sizes = [28, 64] if flag.endswith("3d") else [28, 64, 128, 224]
    for size in sizes:
        spec = resolve(flag, size)
        assert spec.md5 == INFO[flag]["MD5" if size == 28 else f"MD5_{size}"]
        assert spec.filename == (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")
        assert spec.is_3d == flag.endswith("3d")


def test_unknown_flag_lists_valid_flags():
    with pytest.raises(ConfigError, match="unknown MedMNIST flag 'mnist'.*breastmnist.*pathmnist"):
        resolve("mnist")


@pytest.mark.parametrize("flag", ["../breastmnist", "breastmnist/../../etc", "/etc/passwd", ""])
def test_flag_with_path_parts_is_refused(flag):
    with pytest.raises(ConfigError, match="unknown MedMNIST flag"):
        resolve(flag)


def test_unknown_size_lists_available_sizes():
    with pytest.raises(ConfigError, match="size 32 .* breastmnist; available sizes: 28, 64, 128, 224"):
        resolve("breastmnist", 32)
    with pytest.raises(ConfigError, match="available sizes: 28, 64$"):
        resolve("adrenalmnist3d", 128)


def test_shapes_follow_info():
    assert resolve("pathmnist", 64).image_shape == (64, 64, 3)
    assert resolve("organmnist3d").image_shape == (28, 28, 28)
    assert resolve("chestmnist").label_width == 14
    assert resolve("retinamnist").task == "ordinal-regression"


def test_sets_whose_classes_name_a_side_are_known_from_info_alone():
    sided = {flag for flag in INFO if resolve(flag).sided}
    assert sided == {flag for flag in INFO
                     if any(" left" in f" {n.replace('-', ' ')}" or " right" in f" {n.replace('-', ' ')}"
                            for n in INFO[flag]["label"].values())}
    assert {"organamnist", "organcmnist", "organsmnist", "organmnist3d"} <= sided
    assert not {"breastmnist", "pneumoniamnist", "adrenalmnist3d", "retinamnist", "chestmnist"} & sided


def test_the_3d_classes_read_from_source_are_medmnists_own():
    import medmnist.dataset

    from medops.data.info import _classes_3d

    real = {name for name, cls in vars(medmnist.dataset).items()
            if isinstance(cls, type) and issubclass(cls, medmnist.dataset.MedMNIST3D)}
    assert _classes_3d() == real and "AdrenalMNIST3D" in real and "PneumoniaMNIST" not in _classes_3d()
