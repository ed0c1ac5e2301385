import json

import numpy as np
import pytest

from medops import paths
from medops.config import DatasetParams, ValidationParams
from medops.data.info import resolve
from medops.data.synth import make_arrays
from medops.data.validate import validate
from medops.errors import DataError, ValidationFailed
from tests.conftest import save_npz, snapshot

LIMITS = ValidationParams()
CUSTOM = DatasetParams(source="custom")

# One flag per task type / layout the pipeline must handle.
TASK_TYPES = {
    "pneumoniamnist": 28,  # binary, 1 channel
    "octmnist": 28,  # multi-class, 1 channel
    "pathmnist": 28,  # multi-class, RGB
    "chestmnist": 28,  # multi-label (14)
    "retinamnist": 28,  # ordinal, RGB
    "organmnist3d": 28,  # 3D multi-class
    "bloodmnist": 64,  # size 64, RGB
    "nodulemnist3d": 64,  # 3D at 64
}


def _write(flag, arrays):
    return save_npz(paths.raw_file(flag), arrays)


@pytest.mark.parametrize("flag,size", TASK_TYPES.items())
def test_synthetic_data_of_every_task_type_passes(project, flag, size):
    _write(flag, make_arrays(resolve(flag, size), 24))
    out = validate(flag, DatasetParams(size=size, source="custom"), LIMITS)
    result = json.loads((out / "result.json").read_text())
    assert result["success"] and len(result["expectations"]) == 12
    assert "PASSED" in (out / "report.md").read_text() and "(data_docs/index.html)" in (out / "report.md").read_text()
    assert f"{flag}-suite" in (out / "data_docs/index.html").read_text()  # GX's own Data Docs


def test_official_file_passes_with_info_split_sizes(project, official_mirror):
    _write("breastmnist", dict(np.load(official_mirror / "breastmnist.npz")))
    out = validate("breastmnist", DatasetParams(), LIMITS)
    summary = json.loads((out / "result.json").read_text())["summary"]
    assert [row["n_images"] for row in summary] == [546, 78, 156]


def test_official_source_checks_split_sizes_against_info(project):
    _write("breastmnist", make_arrays(resolve("breastmnist"), 10))
    with pytest.raises(ValidationFailed, match=r"split size INFO lists \[train, val, test\]"):
        validate("breastmnist", DatasetParams(), LIMITS)


def _good():
    return make_arrays(resolve("pathmnist"), 30, seed=1)


def _with(**changes):
    arrays = _good()
    for key, fn in changes.items():
        split, part = key.rsplit("_", 1)
        arrays[f"{split}_{part}"] = fn(arrays[f"{split}_{part}"])
    return arrays


def _leak(arrays):
    arrays["test_images"][:10] = arrays["train_images"][:10]
    return arrays


def _blank(x):
    x = x.copy()
    x[:5] = 0
    return x


def _nan(x):
    x = x.astype(np.float32)
    x[0, 0, 0, 0] = np.nan
    return x


BAD = {
    "wrong-dtype": (_with(train_images=lambda x: x.astype(np.int16)), r"dtype is not uint8 \[train\]"),
    "wrong-shape": (_with(val_images=lambda x: x[:, :20, :20]), r"image shape is not \(28, 28, 3\).*\[val\]"),
    "wrong-channels": (_with(test_images=lambda x: x[..., 0]), r"image shape .*\[test\]"),
    "label-out-of-range": (_with(train_labels=lambda y: np.where(y == 3, 12, y)), r"labels above 8 .*\[train\]"),
    "label-count": (_with(val_labels=lambda y: y[:-2]), r"number of labels differs .*\[val\]"),
    "label-layout": (_with(test_labels=lambda y: y.ravel()), r"labels are not shaped \(N, 1\).*\[test\]"),
    "float-labels": (_with(train_labels=lambda y: y.astype(np.float32)), r"labels are not integers \[train\]"),
    "nan-in-float-file": (_with(val_images=_nan), r"images contain NaN or inf \[val\]"),
    "blank-images": (_with(train_images=_blank), r"blank \(constant\) \[train\]"),
    "missing-class": (_with(train_labels=lambda y: np.where(y == 4, 0, y)), r"no training example \[train\]"),
    "train-test-duplicates": (_leak(_good()), r"leakage\) \[test\]"),
}


@pytest.mark.parametrize("arrays,message", BAD.values(), ids=BAD.keys())
def test_bad_data_fails_naming_the_problem_and_keeps_last_good_report(project, arrays, message):
    _write("pathmnist", _good())
    validate("pathmnist", CUSTOM, LIMITS)
    good = snapshot(project / "reports")

    _write("pathmnist", arrays)
    with pytest.raises(ValidationFailed, match=message) as err:
        validate("pathmnist", CUSTOM, LIMITS)
    assert "data/raw/pathmnist.npz" in str(err.value)
    # the last good report is untouched; the failed one sits beside it for people to read
    after = snapshot(project / "reports" / "pathmnist" / "validation")
    assert after == {k: v for k, v in good.items() if "/validation/" in k}
    failed = json.loads((paths.failed_validation_dir("pathmnist") / "result.json").read_text())
    assert failed["success"] is False
    pages = list((paths.failed_validation_dir("pathmnist") / "data_docs" / "validations").rglob("*.html"))
    assert len(pages) == 1 and "Failed" in pages[0].read_text()  # Data Docs of the failed run too


def test_a_later_success_clears_the_failed_report(project):
    _write("pathmnist", _leak(_good()))
    with pytest.raises(ValidationFailed):
        validate("pathmnist", CUSTOM, LIMITS)
    _write("pathmnist", _good())
    validate("pathmnist", CUSTOM, LIMITS)
    assert not paths.failed_validation_dir("pathmnist").exists()


def test_leak_threshold_is_a_parameter(project):
    _write("pathmnist", _leak(_good()))
    validate("pathmnist", CUSTOM, ValidationParams(max_leak_fraction=0.5))


def test_missing_key_and_corrupt_file(project):
    arrays = _good()
    del arrays["val_labels"]
    _write("pathmnist", arrays)
    with pytest.raises(DataError, match="pathmnist.npz: missing key\\(s\\) val_labels"):
        validate("pathmnist", CUSTOM, LIMITS)
    paths.raw_file("pathmnist").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="not a readable npz"):
        validate("pathmnist", CUSTOM, LIMITS)
