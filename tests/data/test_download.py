import os

import pytest

from medops.config import DatasetParams
from medops.data.download import download, md5sum
from medops.data.info import resolve
from medops.data.synth import write_synthetic
from medops.errors import DataError, MedopsError
from tests.conftest import snapshot

OFFICIAL = DatasetParams(size=28)
CUSTOM = DatasetParams(size=28, source="custom")


def test_copies_and_verifies_from_mirror(project, official_mirror):
    out = download("breastmnist", OFFICIAL, official_mirror)
    assert out.resolve() == (project / "data/raw/breastmnist.npz").resolve()
    assert md5sum(out) == resolve("breastmnist").md5


def _tampered_mirror(project, official_mirror, mutate):
    mirror = project / "mirror"
    mirror.mkdir()
    data = (official_mirror / "breastmnist.npz").read_bytes()
    (mirror / "breastmnist.npz").write_bytes(mutate(data))
    return mirror


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "md5 .* does not match the official breastmnist.npz"),
        (lambda b: b[: len(b) // 2], "md5 .* does not match"),
    ],
    ids=["md5-mismatch", "truncated"],
)
def test_bad_mirror_file_keeps_last_good_download(project, official_mirror, mutate, message):
    download("breastmnist", OFFICIAL, official_mirror)
    before = snapshot(project / "data")
    mirror = _tampered_mirror(project, official_mirror, mutate)
    with pytest.raises(DataError, match=message) as err:
        download("breastmnist", OFFICIAL, mirror)
    assert str(mirror / "breastmnist.npz") in str(err.value)
    assert snapshot(project / "data") == before
    assert not [p for p in (project / "data/raw").iterdir() if p.name.startswith(".")], "temp files left"


def test_custom_source_skips_md5_but_refuses_a_corrupt_file(project):
    mirror = project / "mirror"
    path = write_synthetic("pathmnist", 28, 8, mirror)
    assert download("pathmnist", CUSTOM, mirror).exists()
    before = snapshot(project / "data")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="pathmnist.npz: not a readable npz file"):
        download("pathmnist", CUSTOM, mirror)
    assert snapshot(project / "data") == before


def test_custom_source_needs_the_file_in_the_mirror(project):
    with pytest.raises(DataError, match="source is 'custom' but .*pathmnist.npz does not exist"):
        download("pathmnist", CUSTOM, project / "empty")
    with pytest.raises(DataError, match="no mirror set"):
        download("pathmnist", CUSTOM, None)


def test_size_picks_the_sized_file(project):
    mirror = project / "mirror"
    write_synthetic("dermamnist", 64, 4, mirror)
    out = download("dermamnist", DatasetParams(size=64, source="custom"), mirror)
    assert out.name == "dermamnist.npz"


@pytest.mark.skipif(os.environ.get("MEDOPS_TEST_NETWORK") != "1", reason="needs the internet (set MEDOPS_TEST_NETWORK=1)")
def test_official_download_without_mirror(project):
    out = download("breastmnist", OFFICIAL, None)
    assert md5sum(out) == resolve("breastmnist").md5


def test_unwritable_output_folder_is_a_clear_error(project, official_mirror):
    if os.geteuid() == 0:
        # root ignores permission bits; a file where the folder should be fails for everyone
        (project / "data").write_text("not a folder")
    else:
        (project / "data/raw").mkdir(parents=True)
        os.chmod(project / "data/raw", 0o500)
    with pytest.raises(MedopsError, match=r"data(/raw)?: cannot (create output folder|write here)"):
        download("breastmnist", OFFICIAL, official_mirror)
    if (project / "data/raw").is_dir():
        os.chmod(project / "data/raw", 0o700)
