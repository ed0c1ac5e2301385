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
    report = quantize.quantize_checkpoint(checkpoint, processed, tmp_path, calibration_size=128, seconds=0.1,
                                          qat_epochs=1)
    by_name = {v.name: v for v in report.variants}
    assert set(by_name) == {"fp32 eager", "fp32 onnx", "int8 dynamic", "int8 static", "int8 qat"}
    assert by_name["fp32 eager"].test_auc > 0.85  # a real model, so the delta means something
    assert abs(by_name["fp32 onnx"].delta_auc) < 1e-4  # the export computes the same function
    for name in ("int8 static", "int8 qat"):
        assert by_name[name].delta_auc >= -0.01 and by_name[name].smaller > 3, name
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


def test_the_int8_choice_reads_validation_auc_and_speed():
    def v(name, val_auc, speed=1.0, size=1):
        return quantize.Variant(name, None, size, speed, speed, 0.9, 0.5, val_auc, delta_val_auc=val_auc - 0.9)

    report = quantize._choose([v("fp32 eager", 0.9), v("int8 dynamic", 0.85), v("int8 static", 0.87)], 0.01)
    assert report.best_int8 is None and "int8 static -0.0300" in report.reason
    # within the drop the fastest wins; a faster variant that loses too much validation AUC does not
    report = quantize._choose([v("fp32 eager", 0.9), v("int8 static", 0.895, 2.0), v("int8 qat", 0.85, 3.0)], 0.01)
    assert report.best_int8 == "int8 static"
    # a 2 % faster but larger file is a timing tie: the smaller one is registered
    report = quantize._choose([v("fp32 eager", 0.9), v("int8 static", 0.9, 2.0, 100), v("int8 qat", 0.9, 2.04, 110)],
                              0.01)
    assert report.best_int8 == "int8 static"


def test_3d_model_is_quantized_or_says_why(project):
    processed = make_processed("adrenalmnist3d", samples=16)
    checkpoint = train(processed, fast_recipe(arch="cnn3d", epochs=1), project / "m").checkpoint
    report = quantize.quantize_checkpoint(checkpoint, processed, project / "q", calibration_size=8, seconds=0.05)
    assert report.variants[0].name == "fp32 eager" and len(report.variants) >= 2
    assert report.best_int8 or "no int8 variant" in report.reason
