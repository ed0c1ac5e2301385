"""The data stages start without torch or scikit-learn: they read INFO and params only, and
import the heavy libraries a stage runs (Great Expectations in validate) when it runs them
(bench/data_stages.py)."""

import subprocess
import sys

from tests.conftest import REPO


def test_data_stage_commands_import_no_torch_and_no_scikit_learn():
    probe = ("import sys, medops.cli, medops.config, medops.data.download, medops.data.validate, "
             "medops.data.preprocess, medops.data.eda; medops.config.load_params('params.yaml'); "
             "print(sorted(m for m in ('torch', 'torchvision', 'medmnist', 'sklearn', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
