import os
import urllib.error

import pytest
import torch

from medops.errors import ConfigError, MedopsError
from medops.training.models import ARCHITECTURES, InputSpec, build_model, fitting
from medops.training.models.transfer import BACKBONES

TWO_D = [n for n in fitting(False) if n != "vgg16"]  # vgg16 (134 M params) gets its own test


@pytest.mark.parametrize("name", TWO_D)
@pytest.mark.parametrize("channels,classes", [(1, 2), (3, 9)])
def test_2d_models_map_images_to_class_logits(name, channels, classes):
    model = build_model(name, InputSpec(channels, classes, 28, False)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, channels, 28, 28)).shape == (2, classes)


def test_vgg16_builds_and_predicts():
    model = build_model("vgg16", InputSpec(1, 4, 28, False)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 4)


@pytest.mark.parametrize("name", fitting(True))
def test_3d_models(name):
    model = build_model(name, InputSpec(1, 3, 28, True)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28, 28)).shape == (2, 3)


PLAIN_KEYS = {"cnn3d": (True, ["1.weight", "1.bias", "1.running_mean", "1.running_var"], "15.weight"),
              "baseline_cnn": (False, ["0.0.1.weight", "0.0.1.bias", "0.0.1.running_mean", "0.0.1.running_var"], "4.weight"),
              "improved_cnn": (False, ["0.0.1.weight", "0.0.1.bias", "0.0.1.running_mean", "0.0.1.running_var"], "4.weight")}


@pytest.mark.parametrize("name", PLAIN_KEYS)
def test_plain_models_keep_the_layout_their_checkpoints_were_saved_with(name):
    """Registered models are rebuilt by name and loaded by key: batch norm stays right after the
    first convolution, and the head where it was."""
    is_3d, first, head = PLAIN_KEYS[name]
    keys = list(build_model(name, InputSpec(1, 2, 28, is_3d)).state_dict())
    assert keys[1:5] == first and keys[-2] == head


@pytest.mark.parametrize("plain, pooled, is_3d, first_norm_input", [
    ("cnn3d", "cnn3d_pool_first", True, (2, 16, 14, 14, 14)),
    ("baseline_cnn", "baseline_cnn_pool_first", False, (2, 32, 14, 14)),
    ("improved_cnn", "improved_cnn_pool_first", False, (2, 32, 14, 14)),
])
def test_pool_first_normalises_pooled_pixels_with_the_same_weights(plain, pooled, is_3d, first_norm_input):
    spec = InputSpec(1, 2, 28, is_3d)
    torch.manual_seed(0)
    reference = build_model(plain, spec)
    torch.manual_seed(0)
    model = build_model(pooled, spec)
    assert [torch.equal(a, b) for a, b in zip(reference.state_dict().values(), model.state_dict().values())] \
        == [True] * len(reference.state_dict())  # same initialisation: a paired comparison
    norms = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d))]
    seen = {}
    norms[0].register_forward_hook(lambda module, inputs, output: seen.update(shape=inputs[0].shape))
    size = (2, 1, 28, 28, 28) if is_3d else (2, 1, 28, 28)
    model.eval()(torch.randn(size))
    assert seen["shape"] == first_norm_input  # pooled before it is normalised


def test_resnet_stem_follows_image_size():
    small = build_model("resnet18", InputSpec(1, 2, 28, False))
    large = build_model("resnet18", InputSpec(1, 2, 64, False))
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, torch.nn.Identity)
    assert large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2)
    with torch.no_grad():
        assert large.eval()(torch.randn(2, 1, 64, 64)).shape == (2, 2)


def test_octnet_is_much_smaller_than_resnet50():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    spec = InputSpec(1, 2, 28, False)
    assert count(build_model("resnet50", spec)) / count(build_model("octnet", spec)) > 5


def test_unknown_architecture_lists_what_fits():
    with pytest.raises(ConfigError, match="unknown architecture 'resnet17'; for 2D data use one of: baseline_cnn"):
        build_model("resnet17", InputSpec(1, 2, 28, False))


def test_2d_model_on_3d_data_and_the_reverse():
    with pytest.raises(ConfigError, match="resnet18 is a 2D model but the data is 3D; use one of: cnn3d, cnn3d_pool_first, resnet18_3d"):
        build_model("resnet18", InputSpec(1, 2, 28, True))
    with pytest.raises(ConfigError, match="cnn3d is a 3D model but the data is 2D; use one of: baseline_cnn"):
        build_model("cnn3d", InputSpec(1, 2, 28, False))


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_finetune_modes_choose_what_trains():
    spec = InputSpec(3, 5, 28, False)
    frozen = _trainable(build_model("efficientnet_b0", spec, finetune="frozen"))
    partial = _trainable(build_model("efficientnet_b0", spec, finetune="partial"))
    full = _trainable(build_model("efficientnet_b0", spec, finetune="full"))
    assert frozen and all(".classifier." in n for n in frozen)
    assert frozen < partial < full
    assert any(".features.7." in n for n in partial)


def test_weights_from_a_local_file(tmp_path):
    import torchvision

    reference = torchvision.models.efficientnet_b0(weights=None)
    torch.save(reference.state_dict(), tmp_path / "b0.pt")
    model = build_model("efficientnet_b0", InputSpec(3, 2, 28, False), weights=str(tmp_path / "b0.pt"))
    assert torch.equal(model[1].features[0][0].weight, reference.features[0][0].weight)

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(MedopsError, match="r18.pt: not a efficientnet_b0 state dict"):
        build_model("efficientnet_b0", InputSpec(3, 2, 28, False), weights=str(tmp_path / "r18.pt"))
    with pytest.raises(ConfigError, match="weights must be imagenet, none or an existing file"):
        build_model("efficientnet_b0", InputSpec(3, 2, 28, False), weights=str(tmp_path / "missing.pt"))


def test_imagenet_weights_offline_fail_with_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached weights
    # offline on any machine: torchvision's download is the step that fails, as it does here
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError(f"no network for {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(MedopsError) as exc:
        build_model("efficientnet_b0", InputSpec(3, 2, 28, False), weights="imagenet")
    assert "could not get ImageNet weights" in str(exc.value) and "weights: none" in str(exc.value)


@pytest.mark.skipif(os.environ.get("MEDOPS_TEST_NETWORK") != "1", reason="needs the internet (set MEDOPS_TEST_NETWORK=1)")
def test_imagenet_weights_download_when_online(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    build_model("efficientnet_b0", InputSpec(3, 2, 28, False), weights="imagenet")
    assert list((tmp_path / "hub").rglob("*.pth"))


def test_every_backbone_is_registered():
    assert set(BACKBONES) <= set(ARCHITECTURES)


@pytest.mark.parametrize("name,is_3d", [("baseline_cnn_pool_first", False), ("improved_cnn", False),
                                        ("cnn3d_pool_first", True)])
def test_width_scales_the_channels_of_the_plain_models(name, is_3d):
    spec = InputSpec(1, 3, 28, is_3d)
    convs = {width: [m.out_channels for m in build_model(name, spec, width=width).modules()
                     if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))] for width in (1.0, 2.0)}
    assert convs[2.0] == [2 * c for c in convs[1.0]]
    x = torch.randn(2, 1, *(28,) * (3 if is_3d else 2))
    with torch.no_grad():
        assert build_model(name, spec, width=2.0).eval()(x).shape == (2, 3)


def test_width_is_refused_where_there_is_none_to_scale():
    with pytest.raises(ConfigError, match=r"resnet18 has no width to scale \(train.width 2\); widths scale for "):
        build_model("resnet18", InputSpec(1, 2, 28, False), width=2.0)
    build_model("resnet18", InputSpec(1, 2, 28, False), width=1.0)  # the default builds it
