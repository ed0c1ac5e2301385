import numpy as np
import pytest
import torch

from medops.config import AugmentParams
from medops.training.augment import augment
from medops.evaluation.metrics import compute_metrics, expected_calibration_error


def test_binary_metrics_by_hand():
    y = np.array([0, 0, 1, 1, 1])
    p1 = np.array([0.1, 0.6, 0.4, 0.8, 0.9])
    scores = np.stack([1 - p1, p1], 1)
    m = compute_metrics(y, scores, "binary-class", ["neg", "pos"])
    assert m["acc"] == pytest.approx(3 / 5)  # threshold 0.5: predictions 0,1,0,1,1
    # pairs (pos, neg) ranked correctly: (0.4>0.1), (0.8>0.1,0.6), (0.9>0.1,0.6) = 5 of 6
    assert m["auc"] == pytest.approx(5 / 6)
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]
    assert m["per_class"]["pos"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["pos"]["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["neg"]["f1"] == pytest.approx(0.5)


def test_multiclass_metrics_by_hand():
    y = np.array([0, 1, 2, 2])
    scores = np.array([[0.7, 0.2, 0.1], [0.1, 0.4, 0.5], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    m = compute_metrics(y, scores, "multi-class", ["a", "b", "c"])
    assert m["acc"] == pytest.approx(2 / 4)  # argmax: a, c, b, c
    # one-vs-rest AUCs: a 1.0; b 2 of 3 (pos, neg) pairs ranked right; c 3 of 4
    assert m["auc"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]


def test_multilabel_metrics_by_hand():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    scores = np.array([[0.9, 0.2], [0.3, 0.7], [0.6, 0.4], [0.2, 0.1]])
    m = compute_metrics(y, scores, "multi-label, binary-class", ["x", "y"])
    assert m["acc"] == pytest.approx((4 / 4 + 3 / 4) / 2)  # per-label accuracy, averaged
    assert m["auc"] == pytest.approx((1.0 + 1.0) / 2)
    assert "confusion_matrix" not in m


def test_ordinal_uses_multiclass_definitions():
    y = np.array([0, 1, 2, 3, 4])
    scores = np.eye(5)[[0, 1, 2, 4, 4]]
    assert compute_metrics(y, scores, "ordinal-regression", list("abcde"))["acc"] == pytest.approx(4 / 5)


def test_ece_by_hand():
    y = np.array([1, 1, 0, 0])
    p1 = np.array([0.95, 0.95, 0.65, 0.65])  # predictions 1,1,1,1
    ece, table = expected_calibration_error(y, np.stack([1 - p1, p1], 1), "binary-class")
    # bin 0.9-1.0: conf .95, acc 1 -> gap .05; bin 0.6-0.7: conf .65, acc 0 -> gap .65
    assert ece == pytest.approx(0.5 * 0.05 + 0.5 * 0.65)
    assert [b["count"] for b in table] == [2, 2]


def test_auc_undefined_when_a_class_is_missing_is_nan_not_a_crash():
    m = compute_metrics(np.array([1, 1]), np.array([[0.2, 0.8], [0.4, 0.6]]), "binary-class", ["a", "b"])
    assert np.isnan(m["auc"]) and m["acc"] == 1.0


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_augmentation_off_is_identity_and_flip_is_exact():
    x = torch.rand(8, 1, 28, 28)
    assert torch.equal(augment(x, AugmentParams(enabled=False), _gen(), False), x)
    flip_only = AugmentParams(rotation=0, shift=0, zoom=0, hflip=1.0, vflip=0.0)
    assert torch.equal(augment(x, flip_only, _gen(), False), x.flip(-1))


def test_augmentation_is_seeded_and_keeps_shape():
    x = torch.rand(16, 3, 28, 28)
    params = AugmentParams(rotation=20, shift=0.1, zoom=0.1)
    a, b = augment(x, params, _gen(1), False), augment(x, params, _gen(1), False)
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, augment(x, params, _gen(2), False))


def test_3d_augmentation_flips_and_turns_keep_content():
    x = torch.rand(6, 1, 8, 8, 8)
    out = augment(x, AugmentParams(hflip=0.5, rot90=True), _gen(), True)
    assert out.shape == x.shape
    # flips and 90-degree turns only move voxels: each volume keeps its sorted values
    assert torch.equal(out.flatten(1).sort(1).values, x.flatten(1).sort(1).values)
