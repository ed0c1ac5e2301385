"""Every flow and study run is a fresh process: what it imports before its first step is paid
per run (pool mode pays it per study run)."""

import subprocess
import sys

from tests.conftest import REPO


def test_the_training_flow_imports_no_grad_cam_stack_until_it_explains():
    probe = ("import sys, flows.training; "
             "print(sorted(m for m in ('pytorch_grad_cam', 'torchvision', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
