import json
import numpy as np
import pytest

from medops import paths
from medops.config import DatasetParams, EdaParams
from medops.data.eda import eda
from medops.data.info import resolve
from medops.data.preprocess import class_weights, preprocess, to_single_label
from medops.data.processed import load_split, read_meta
from medops.data.synth import make_arrays
from medops.errors import ConfigError
from tests.conftest import save_npz, snapshot


def _prepare(flag, size=28, samples=20, **ds):
    save_npz(paths.raw_file(flag), make_arrays(resolve(flag, size), samples))
    return preprocess(flag, DatasetParams(size=size, source="custom", **ds))


def test_rgb_2d_becomes_channels_first_with_channel_stats(project):
    out = _prepare("pathmnist")
    raw = np.load(paths.raw_file("pathmnist"))
    x, y = load_split(out, "train")
    assert x.shape == (20, 3, 28, 28) and x.dtype == np.uint8
    assert np.array_equal(x, np.moveaxis(raw["train_images"], -1, 1))
    assert y.shape == (20,) and y.dtype == np.int64
    meta = read_meta(out)
    expected = raw["train_images"].reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(meta.mean, expected.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(meta.std, expected.std(axis=0), rtol=1e-6)
    assert meta.class_names[0] == "adipose" and meta.n_classes == 9


def test_3d_volume_gets_a_channel_axis(project):
    out = _prepare("organmnist3d", samples=12)
    x, _ = load_split(out, "val")
    assert x.shape == (12, 1, 28, 28, 28)
    assert read_meta(out).is_3d


def test_class_weights_are_inverse_frequency():
    y = np.array([0, 0, 0, 1])  # balanced weight: n / (k * count)
    assert class_weights(y, 2, multi_label=False) == pytest.approx([4 / 6, 4 / 2])
    labels = np.array([[1, 0], [0, 0], [1, 1], [0, 0]], dtype=np.float32)
    assert class_weights(labels, 2, multi_label=True) == pytest.approx([2 / 2, 3 / 1])


def test_class_weights_match_scikit_learns_balanced_rule_with_a_class_missing():
    from sklearn.utils.class_weight import compute_class_weight

    y = np.random.default_rng(0).choice([0, 1, 3, 4], size=500, p=[0.6, 0.25, 0.1, 0.05])  # class 2 absent
    expected = np.ones(5)
    expected[[0, 1, 3, 4]] = compute_class_weight("balanced", classes=np.array([0, 1, 3, 4]), y=y)
    assert class_weights(y, 5, multi_label=False) == pytest.approx(expected.tolist())
    assert class_weights(y, 5, multi_label=False)[2] == 1.0  # an absent class keeps weight 1


def test_multi_label_stays_multi_label_by_default(project):
    out = _prepare("chestmnist")
    _, y = load_split(out, "train")
    assert y.shape == (20, 14) and y.dtype == np.float32
    assert read_meta(out).task == "multi-label, binary-class"


def test_single_label_flag_adds_normal_class(project):
    labels = np.array([[0, 0, 0], [0, 1, 1], [1, 0, 1]])
    assert to_single_label(labels).tolist() == [0, 2, 1]
    out = _prepare("chestmnist", single_label=True)
    meta = read_meta(out)
    assert meta.task == "multi-class" and meta.class_names[0] == "normal" and meta.n_classes == 15
    raw = np.load(paths.raw_file("chestmnist"))["train_labels"]
    assert np.array_equal(load_split(out, "train")[1], to_single_label(raw))


def test_single_label_flag_on_a_single_label_set_is_refused(project):
    with pytest.raises(ConfigError, match="single_label: only for multi-label sets"):
        _prepare("pathmnist", single_label=True)


def test_stats_file_for_dvc_metrics(project):
    _prepare("pneumoniamnist", samples=10)
    stats = json.loads(paths.data_stats_file("pneumoniamnist").read_text())
    assert stats["splits"]["train"]["n"] == 10
    assert sum(stats["splits"]["test"]["class_counts"].values()) == 10


def test_official_file_round_trips(project, official_mirror):
    raw = dict(np.load(official_mirror / "pneumoniamnist.npz"))
    save_npz(paths.raw_file("pneumoniamnist"), raw)
    out = preprocess("pneumoniamnist", DatasetParams())
    x, y = load_split(out, "test")
    assert np.array_equal(x[:, 0], raw["test_images"]) and np.array_equal(y, raw["test_labels"].ravel())
    # stored as plain .npy so a split is one contiguous read (bench/load_split.py times it)
    assert x.flags.c_contiguous and x.dtype == np.uint8


def test_failed_preprocess_keeps_the_last_good_output(project):
    out = _prepare("pathmnist")
    before = snapshot(out)
    paths.raw_file("pathmnist").write_bytes(b"broken")
    with pytest.raises(Exception, match="not a readable npz"):
        preprocess("pathmnist", DatasetParams(source="custom"))
    assert snapshot(out) == before


@pytest.mark.parametrize("flag,size", [("pathmnist", 28), ("chestmnist", 28), ("organmnist3d", 28), ("dermamnist", 64)])
def test_eda_writes_every_plot(project, flag, size):
    _prepare(flag, size=size, samples=16)
    out = eda(flag, EdaParams(samples_per_class=4))
    names = {p.name for p in out.iterdir()}
    expected = {"samples.png", "class_distribution.png", "intensity_maps.png", "pixel_histogram.png"}
    assert expected <= names
    assert ("volume_slices.png" in names) == flag.endswith("3d")
    for p in out.iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
