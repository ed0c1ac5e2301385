"""Int8 variants through ONNX Runtime, measured on real PneumoniaMNIST."""

import numpy as np
import pytest

from medops import quantize
from medops.config import DatasetParams
from medops.data.download import download
from medops.data.preprocess import preprocess
from medops.train import train
from tests.conftest import fast_recipe, make_processed


@pytest.fixture(scope="module")
def pneumonia(tmp_path_factory, official_mirror):
    """baseline_cnn trained for 3 epochs on the official PneumoniaMNIST (about 20 s on 2 cores)."""
    root = tmp_path_factory.mktemp("pneumonia")
    ds = DatasetParams(size=28)
    raw = download("pneumoniamnist", ds, official_mirror, root / "raw.npz")
    processed = preprocess("pneumoniamnist", ds, raw, root / "processed")
    result = train(processed, fast_recipe(epochs=3, batch_size=128), root / "model")
    return processed, result.checkpoint


def test_static_int8_keeps_auc_on_real_data_and_is_smaller(pneumonia, tmp_path):
    processed, checkpoint = pneumonia
    report = quantize.quantize_checkpoint(checkpoint, processed, tmp_path, calibration_size=128, seconds=0.1)
    by_name = {v.name: v for v in report.variants}
    assert set(by_name) == {"fp32 eager", "fp32 onnx", "int8 dynamic", "int8 static"}
    assert by_name["fp32 eager"].test_auc > 0.85  # a real model, so the delta means something
    assert abs(by_name["fp32 onnx"].delta_auc) < 1e-4  # the export computes the same function
    static = by_name["int8 static"]
    assert static.delta_auc >= -0.01 and static.smaller > 3
    assert report.best_int8 is not None and report.best_int8.startswith("int8")
    assert (tmp_path / quantize.INT8_STATIC).exists() and not list(tmp_path.glob("*.tmp*"))
    assert "| int8 static" in quantize.markdown_table(report)


def test_exported_graph_takes_any_batch_of_raw_images(pneumonia, tmp_path):
    processed, checkpoint = pneumonia
    quantize.quantize_checkpoint(checkpoint, processed, tmp_path, calibration_size=32, seconds=0.05)
    predict = quantize.onnx_predictor(tmp_path / quantize.INT8_STATIC)
    for n in (1, 7):
        probs = predict(np.random.default_rng(n).integers(0, 256, (n, 28, 28), dtype=np.uint8))
        assert probs.shape == (n, 2) and np.allclose(probs.sum(1), 1, atol=1e-4)
        assert len(np.unique(probs)) > 1 and not np.allclose(probs * 255, np.round(probs * 255))  # float outputs


def test_no_int8_variant_is_chosen_when_all_lose_too_much_auc():
    v = lambda name, auc: quantize.Variant(name, None, 1, 1.0, 1.0, auc, 0.5, delta_auc=auc - 0.9)  # noqa: E731
    report = quantize._choose([v("fp32 eager", 0.9), v("int8 dynamic", 0.85), v("int8 static", 0.87)], 0.01)
    assert report.best_int8 is None and "int8 static -0.0300" in report.reason


def test_3d_model_is_quantized_or_says_why(project):
    processed = make_processed("adrenalmnist3d", samples=16)
    checkpoint = train(processed, fast_recipe(arch="cnn3d", epochs=1), project / "m").checkpoint
    report = quantize.quantize_checkpoint(checkpoint, processed, project / "q", calibration_size=8, seconds=0.05)
    assert report.variants[0].name == "fp32 eager" and len(report.variants) >= 2
    assert report.best_int8 or "no int8 variant" in report.reason
