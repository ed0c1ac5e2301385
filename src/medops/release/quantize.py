"""Int8 variants of a trained model for CPU serving, through ONNX Runtime.

The exported graph is the InferenceModel (raw uint8 MedMNIST images in, probabilities out),
so every variant takes exactly what the served fp32 model takes. Variants:
- fp32 eager: the PyTorch model, the baseline for every delta;
- fp32 onnx: the same graph under ONNX Runtime;
- int8 dynamic: weights int8, activations quantized per batch (ConvInteger: slow for CNNs
  on x86, kept in the table so the choice is visible);
- int8 static: QDQ, per-channel weights, activation ranges calibrated on a training subset;
  the classifier head and everything after it (prior correction, softmax) stay float;
- int8 QAT: quantization-aware training with torchao's pt2e flow (X86InductorQuantizer,
  fake quantization in the graph) for a few epochs from the trained weights, converted and
  exported to the same QDQ ONNX form, so ONNX Runtime runs it with the same int8 kernels.
torch.ao.quantization is deprecated, hence ONNX Runtime and torchao rather than eager int8 modules.

Every variant is built with a reduced range (7-bit weights, or 7-bit activations for QAT). On
x86 CPUs without VNNI, ONNX Runtime multiplies uint8 activations by int8 weights with
VPMADDUBSW, whose int16 pair sums saturate at full range: a trained model's first convolution
(full-range pixels, batch-norm-folded weights) then loses 0.02-0.04 AUC and up to 0.2 ACC.
With VNNI the full range would be exact, but a registered artifact may run on either CPU.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from medops.training.checkpoint import model_from_checkpoint
from medops.data.processed import load_split, read_meta
from medops.errors import MedopsError
from medops.training.scoring import auc_and_acc
from medops.release.inference import Ensemble, InferenceModel, load_form, to_medmnist_layout
from medops.files import atomic_path, ensure_dir

log = logging.getLogger(__name__)

FP32_ONNX, INT8_DYNAMIC, INT8_STATIC, INT8_QAT = ("fp32-onnx.onnx", "int8-dynamic.onnx", "int8-static.onnx",
                                                  "int8-qat.onnx")
# Every variant is timed at batch 32 first. An int8 variant below SCREEN_RATIO of fp32 ONNX
# Runtime's speed there cannot win at batch 256 (CPU inference gains nowhere near 1/SCREEN_RATIO
# from the larger batch), so it is timed no further: 3D int8 ran at 0.2-0.5x of it on every CPU
# measured (AVX2-only AMD; Intel with VNNI and AMX), and a batch of 256 volumes took 7 s and more
# per variant to time.
SCREEN_BATCH, SCREEN_RATIO = 32, 0.6


@dataclass
class Variant:
    name: str
    file: str | None  # None for the eager model
    size_bytes: int
    images_per_s_b1: float
    images_per_s_b256: float  # nan: left out at the batch-32 screen (SCREEN_RATIO)
    test_auc: float
    test_acc: float
    val_auc: float = math.nan  # the choice reads validation, like every other model selection
    val_acc: float = math.nan
    delta_val_auc: float = 0.0
    delta_val_acc: float = 0.0
    delta_auc: float = 0.0  # against fp32 eager
    delta_acc: float = 0.0
    speedup_b256: float = 1.0
    smaller: float = 1.0
    images_per_s_b32: float = math.nan


@dataclass
class QuantizationReport:
    variants: list[Variant]
    best_int8: str | None  # name of the variant to register, None when none is accurate and faster
    reason: str

    def as_dict(self) -> dict:
        """JSON-ready: an accuracy not measured is null."""
        variants = [{k: None if isinstance(x, float) and math.isnan(x) else x for k, x in asdict(v).items()}
                    for v in self.variants]
        return {"variants": variants, "best_int8": self.best_int8, "reason": self.reason}


def export_onnx(model: InferenceModel, example: np.ndarray, path: Path) -> Path:
    """Export with a dynamic batch axis and the weights inside the one file."""
    batch = torch.export.Dim("batch", min=1)
    with atomic_path(path) as tmp, contextlib.redirect_stdout(io.StringIO()):  # the exporter prints progress
        program = torch.onnx.export(model, (torch.from_numpy(example),), input_names=["images"],
                                    output_names=["probabilities"], dynamic_shapes=({0: batch},), verbose=False)
        program.save(str(tmp), external_data=False)
    return path


def prepare_for_quantization(fp32: Path, out: Path) -> Path:
    """ONNX Runtime's recommended pre-pass: shape inference and graph optimisation."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with atomic_path(out) as tmp:
        quant_pre_process(str(fp32), str(tmp))
    return out


def quantize_dynamic_onnx(fp32: Path, out: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with atomic_path(out) as tmp:
        quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
    return out


def head_nodes(path: Path) -> list[str]:
    """The last Gemm/MatMul (the classifier) and every node after it: they stay float, since
    quantized logits step in 1/scale units and tie the probabilities that AUC ranks."""
    import onnx

    nodes = list(onnx.load(str(path)).graph.node)  # ONNX graphs are stored in topological order
    last = max((i for i, n in enumerate(nodes) if n.op_type in ("Gemm", "MatMul")), default=len(nodes))
    return [n.name for n in nodes[last:]]


@contextlib.contextmanager
def _quiet_rank1_axis_warnings():
    """ONNX Runtime warns, for every weight of rank 1, that per-channel axis 1 does not apply to
    it, and quantizes it per tensor: batch norm's scale where a pool sits between the convolution
    and the norm (the pool-first models), which no pass folds. 50 such lines in one `make run`."""
    def keep(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Axis ") and "is out-of-range for weight" in message and "with rank 1" in message)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def quantize_static_onnx(fp32: Path, out: Path, calibration: np.ndarray, batch_size: int = 32,
                         activations: str = "QUInt8", weights: str = "QInt8", reduce_range: bool = True) -> Path:
    """Static QDQ int8 with per-channel weights. The defaults are what ships (uint8 activations,
    7-bit int8 weights: the module docstring); bench/int8_range.py tries the others."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": calibration[i:i + batch_size]} for i in range(0, len(calibration), batch_size)])

        def get_next(self):
            return next(self.batches, None)

    with atomic_path(out) as tmp, _quiet_rank1_axis_warnings():
        quantize_static(str(fp32), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=reduce_range, activation_type=QuantType[activations],
                        weight_type=QuantType[weights], nodes_to_exclude=head_nodes(fp32))
    return out


def quantization_aware(model: torch.nn.Module, processed: Path, task: str, epochs: int, lr: float,
                       batch_size: int = 128, seed: int = 0, offset: list[float] | None = None) -> torch.nn.Module | None:
    """Fine-tune with int8 fake quantization in the graph (torchao pt2e), then convert: the
    result computes with int8 weights and activations (quantize/dequantize around each op).
    None, before any training, when the quantizer leaves a convolution's weight in float (it
    has no int8 pattern for it, as for Conv3d): the fine-tuning could only be discarded.

    The loss is unweighted cross-entropy on the prior-corrected logits (`offset`, as served):
    it keeps the probabilities the model was selected with instead of tilting them again."""
    from torchao.quantization.pt2e import (allow_exported_model_train_eval, move_exported_model_to_eval,
                                           move_exported_model_to_train)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)

    from medops.training.batches import Normalizer, batches, load_tensors
    from medops.task_rules import loss_function

    meta = read_meta(processed)
    cpu = torch.device("cpu")
    data, norm = load_tensors(processed, "train", cpu), Normalizer(meta, cpu)
    loss_fn = loss_function(task, None)
    shift = torch.tensor(offset, dtype=torch.float32) if offset else torch.zeros(())
    example = norm(data.x[:2])
    graph = torch.export.export(model.train(), (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    # 7-bit activations: see the module docstring (int16 saturation on CPUs without VNNI)
    config = get_default_x86_inductor_quantization_config(is_qat=True, reduce_range=True)
    quantizer = X86InductorQuantizer().set_global(config)
    prepared = prepare_qat_pt2e(graph.module(), quantizer)
    if not _observes_every_conv_weight(prepared.graph):
        return None
    move_exported_model_to_train(prepared)
    optimizer = torch.optim.Adam(prepared.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in batches(len(data), batch_size, gen):
            loss = loss_fn(prepared(norm(data.x[idx])) + shift, data.y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    move_exported_model_to_eval(prepared)
    # allow .eval() on the result: the InferenceModel wrapper calls it
    return allow_exported_model_train_eval(convert_pt2e(prepared))


def _observes_every_conv_weight(graph: torch.fx.Graph) -> bool:
    """Whether the quantizer put a fake-quantize observer on every convolution's weight."""
    convs = [n for n in graph.nodes if n.op == "call_function" and "conv" in str(n.target)]
    return all(isinstance(n.args[1], torch.fx.Node) and n.args[1].op == "call_module" for n in convs)


def _has_int8(path: Path) -> bool:
    """Whether every convolution (or, without any, every matmul) takes int8 weights."""
    import onnx

    nodes = onnx.load(str(path)).graph.node
    dequantized = {out for n in nodes if n.op_type == "DequantizeLinear" for out in n.output}
    layers = [n for n in nodes if n.op_type == "Conv"] or [n for n in nodes if n.op_type in ("Gemm", "MatMul")]
    return bool(layers) and all(n.input[1] in dequantized for n in layers)


def onnx_predictor(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: session.run(None, {"images": images})[0]


def eager_predictor(model: InferenceModel) -> Callable[[np.ndarray], np.ndarray]:
    def predict(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(images)).numpy()
    return predict


def throughput(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int, seconds: float,
               first_call_s: float | None = None) -> float:
    """Images per second at a batch size: the best of repeated runs for about `seconds`.
    `first_call_s`: how long the caller's own call on the first `batch` images took. That call
    was the warm-up and counts as the first run, so a model slower than `seconds` per batch (an
    int8 3D model at batch 256 on a small CPU takes over 10 s) is not run again."""
    x = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))
    if first_call_s is None:
        predict(x)  # first-call allocation and kernel selection
        best, deadline = math.inf, time.perf_counter() + seconds
    else:
        best, deadline = first_call_s, time.perf_counter() + seconds - first_call_s
    while best == math.inf or time.perf_counter() < deadline:
        t = time.perf_counter()
        predict(x)
        best = min(best, time.perf_counter() - t)
    return batch / best


def timed_first_batch(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                      batch: int = 256) -> tuple[np.ndarray, float | None]:
    """Predictions for all images, in batches, and the seconds the first call took when it was a
    full batch (None otherwise): throughput() counts it as a timed run."""
    started = time.perf_counter()
    head = predict(images[:batch])
    head_s = time.perf_counter() - started if len(images) >= batch else None
    if len(images) <= batch:
        return head, head_s
    return np.concatenate([head, predict_all(predict, images[batch:], batch)]), head_s


def predict_all(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate([predict(images[i:i + batch]) for i in range(0, len(images), batch)])


def calibration_images(processed: Path, size: int) -> np.ndarray:
    """A fixed random subset of the training images, in the served (MedMNIST) layout, that sets
    static int8's activation ranges."""
    x_train = load_split(processed, "train")[0]
    pick = np.random.default_rng(0).permutation(len(x_train))[:size]
    return np.ascontiguousarray(to_medmnist_layout(x_train[np.sort(pick)]))


def quantize_checkpoint(checkpoints: Path | list[Path], processed: Path, out_dir: Path, calibration_size: int = 256,
                        max_auc_drop: float = 0.005, seconds: float = 1.0, qat_epochs: int = 0,
                        qat_lr: float = 1e-4, max_acc_drop: float = 0.01, flip: bool = False,
                        qat_when: str = "needed", evaluate: str = "contenders",
                        screen: bool = True) -> QuantizationReport:
    """Build every variant of a model form (one checkpoint, or an ensemble of several, with or
    without flip TTA: inference.load_form) in out_dir and time it; measure it on val (to choose)
    and test, with evaluate "contenders" only where it is fp32 or faster than fp32 ONNX Runtime,
    with "all" every variant (bench/quantize.py). Quantization-aware training needs one network to
    fine-tune, so ensembles skip it; with qat_when "needed" it runs only where it can change the
    outcome (qat_cannot_help), with "always" whenever it can. screen=False times every variant
    at every batch size (bench/quantize_screen.py)."""
    processed, out_dir = Path(processed), ensure_dir(Path(out_dir))
    checkpoints = [Path(checkpoints)] if isinstance(checkpoints, (str, Path)) else [Path(c) for c in checkpoints]
    meta = read_meta(processed)
    inference = load_form(checkpoints, flip)
    x_test, y_test = load_split(processed, "test")
    x_test = np.ascontiguousarray(to_medmnist_layout(x_test))
    x_val, y_val = load_split(processed, "val")
    x_val = np.ascontiguousarray(to_medmnist_layout(x_val))
    calibration = calibration_images(processed, calibration_size)

    fp32 = export_onnx(inference, x_test[:2], out_dir / FP32_ONNX)
    prepared = prepare_for_quantization(fp32, out_dir / "fp32-prepared.onnx")
    files = {"fp32 onnx": fp32, "int8 dynamic": quantize_dynamic_onnx(prepared, out_dir / INT8_DYNAMIC),
             "int8 static": quantize_static_onnx(prepared, out_dir / INT8_STATIC, calibration)}
    prepared.unlink()
    checkpoint = checkpoints[0]

    def measure(name: str, path: Path | None, size: int, predict: Callable[[np.ndarray], np.ndarray],
                must_beat: tuple[float, float] = (0.0, 0.0)) -> Variant:
        """Speed at batch 32, then at batch 256 (the first test batch's call is its first timed
        run), then accuracy on val and test; each step only for a variant faster than must_beat
        (SCREEN_RATIO of fp32 ONNX Runtime's images/s at batch 32, all of it at batch 256)."""
        per_s_b32 = throughput(predict, x_test, SCREEN_BATCH, seconds / 4)
        if screen and per_s_b32 < SCREEN_RATIO * must_beat[0]:
            return Variant(name, path and path.name, size, math.nan, math.nan, math.nan, math.nan,
                           images_per_s_b32=per_s_b32)
        head, first_call_s = timed_first_batch(predict, x_test[:256], 256)
        per_s_b256 = throughput(predict, x_test, 256, seconds, first_call_s)
        per_s_b1 = throughput(predict, x_test, 1, seconds / 4)
        if per_s_b256 <= must_beat[1]:
            return Variant(name, path and path.name, size, per_s_b1, per_s_b256, math.nan, math.nan,
                           images_per_s_b32=per_s_b32)
        test_scores = np.concatenate([head, predict_all(predict, x_test[256:])]) if len(x_test) > 256 else head
        test_auc, test_acc = auc_and_acc(y_test, test_scores, meta.task)
        val_auc, val_acc = auc_and_acc(y_val, predict_all(predict, x_val), meta.task)
        return Variant(name, path and path.name, size, per_s_b1, per_s_b256, test_auc, test_acc, val_auc, val_acc,
                       images_per_s_b32=per_s_b32)

    def onnx_variant(name: str, path: Path) -> Variant | None:
        try:
            predict = onnx_predictor(path)
        except Exception as exc:  # an op the int8 kernels lack (some 3D ops): say so, keep the others
            log.warning("%s: %s cannot run under ONNX Runtime: %s", checkpoint, name, str(exc).splitlines()[0])
            return None
        # an int8 variant no faster than the fp32 graph cannot be registered: its accuracy is only
        # measured when asked for (evaluate "all"; 3D int8 runs at a fifth to a half on the CPUs measured)
        floor = fp32_onnx_speeds(variants) if name.startswith("int8") and evaluate != "all" else (0.0, 0.0)
        return measure(name, path, path.stat().st_size, predict, floor)

    eager_size = sum(t.numel() * t.element_size() for t in inference.state_dict().values())
    variants = [measure("fp32 eager", None, eager_size, eager_predictor(inference))]
    # a bar in a terminal only (disable=None): DVC and Prefect logs stay clean
    for name, path in tqdm(files.items(), desc=f"{checkpoint.parent.name}: timing variants", leave=False,
                           disable=None):
        variants += [v for v in [onnx_variant(name, path)] if v]
    report = choose(with_deltas(variants), max_auc_drop, max_acc_drop)
    if qat_epochs:
        why_not = None if qat_when == "always" else qat_cannot_help(report)
        if why_not is None and len(checkpoints) > 1:
            why_not = f"the form averages {len(checkpoints)} networks and QAT fine-tunes one"
        if why_not:
            report.reason += f"; QAT not run: {why_not}"
        elif path := quantization_aware_file(checkpoint, processed, meta.task, qat_epochs, qat_lr, flip, x_test[:2],
                                             out_dir / INT8_QAT):
            if qat := onnx_variant("int8 qat", path):
                report = choose(with_deltas([*variants, qat]), max_auc_drop, max_acc_drop)
    return report


def qat_cannot_help(report: QuantizationReport) -> str | None:
    """Why quantization-aware training cannot change which variant is registered, or None when it
    can: static int8 is faster than fp32 ONNX Runtime but misses the accuracy rule. QAT recovers
    accuracy, not speed (it runs static int8's kernels), and costs an epoch of training (32 s of
    `make run` for PneumoniaMNIST on a 2-core AVX2 host)."""
    if report.best_int8:
        return f"{report.best_int8} qualifies"
    by_name = {v.name: v for v in report.variants}
    static, onnx = by_name.get("int8 static"), by_name.get("fp32 onnx")
    if static is None or onnx is None:
        return "static int8 does not run here"
    if not static.images_per_s_b256 > onnx.images_per_s_b256:  # nan: left out at the batch-32 screen
        return "it would run static int8's kernels, which are not faster than fp32 ONNX Runtime here"
    return None


def quantization_aware_file(checkpoint: Path, processed: Path, task: str, epochs: int, lr: float, flip: bool,
                            example: np.ndarray, out: Path) -> Path | None:
    """The QAT variant exported to ONNX, or None (logged) when it cannot be built as int8."""
    try:
        model, ckpt = model_from_checkpoint(checkpoint)
        model = quantization_aware(model, processed, task, epochs, lr, offset=ckpt.get("logit_offset"))
        if model is None:  # Conv3d, for one
            log.warning("%s: the x86 quantizer has no int8 pattern for this model's convolutions; "
                        "no int8 qat variant", checkpoint)
            return None
        module = InferenceModel.from_checkpoint(ckpt, model).eval()
        path = export_onnx(Ensemble([module], flip).eval() if flip else module, example, out)
        if _has_int8(path):
            return path
        path.unlink()
        log.warning("%s: the exported QAT model computes its convolutions in float; no int8 qat variant", checkpoint)
    except Exception as exc:  # noqa: BLE001 - an op the pt2e quantizer or exporter lacks: say so
        log.warning("%s: quantization-aware training failed: %s: %s", checkpoint, type(exc).__name__,
                    " ".join(str(exc).split())[:300])
    return None


def with_deltas(variants: list[Variant]) -> list[Variant]:
    """The variants with their deltas and ratios against the first (fp32 eager)."""
    base = variants[0]
    for v in variants:
        v.delta_auc, v.delta_acc = v.test_auc - base.test_auc, v.test_acc - base.test_acc
        v.delta_val_auc, v.delta_val_acc = v.val_auc - base.val_auc, v.val_acc - base.val_acc
        v.speedup_b256, v.smaller = v.images_per_s_b256 / base.images_per_s_b256, base.size_bytes / v.size_bytes
    return variants


def fp32_onnx_speeds(variants: list[Variant]) -> tuple[float, float]:
    """Images/s at batch 32 and 256 of the fp32 graph under ONNX Runtime: what an int8 variant
    must beat (at batch 32 by SCREEN_RATIO of it)."""
    return next(((v.images_per_s_b32, v.images_per_s_b256) for v in variants if v.name == "fp32 onnx"), (0.0, 0.0))


def choose(variants: list[Variant], max_auc_drop: float, max_acc_drop: float) -> QuantizationReport:
    """The int8 variant to register: on validation (test is reported, never used to choose) within
    max_auc_drop AUC and max_acc_drop ACC of fp32, and faster at batch 256 than the fp32 graph
    under ONNX Runtime on this machine (the artifact it competes with); the fastest of those,
    near-ties to the smaller file. None, with the reason, when no variant qualifies."""
    int8 = [v for v in variants if v.name.startswith("int8")]
    if not int8:
        return QuantizationReport(variants, None, "no int8 variant ran")
    onnx_b32, fp32_onnx = fp32_onnx_speeds(variants)
    why = {}
    for v in int8:
        if math.isnan(v.images_per_s_b256):
            why[v.name] = (f"{v.images_per_s_b32:.0f} img/s at batch {SCREEN_BATCH}, under {SCREEN_RATIO}x fp32 ONNX "
                           f"Runtime's {onnx_b32:.0f}")
        elif v.images_per_s_b256 <= fp32_onnx:
            why[v.name] = f"{v.images_per_s_b256:.0f} img/s, not faster than fp32 ONNX Runtime ({fp32_onnx:.0f})"
        elif not (math.isfinite(v.delta_val_auc) and v.delta_val_auc >= -max_auc_drop):
            why[v.name] = f"validation AUC {v.delta_val_auc:+.4f} (limit -{max_auc_drop})"
        elif not v.delta_val_acc >= -max_acc_drop:
            why[v.name] = f"validation ACC {v.delta_val_acc:+.4f} (limit -{max_acc_drop})"
    keeps = [v for v in int8 if v.name not in why]
    if not keeps:
        return QuantizationReport(variants, None, "no int8 variant registered: " +
                                  "; ".join(f"{name}: {reason}" for name, reason in why.items()))
    fastest = max(v.images_per_s_b256 for v in keeps)
    # timings differ by a few percent run to run: among variants that fast, the smallest file
    best = min((v for v in keeps if v.images_per_s_b256 >= 0.95 * fastest), key=lambda v: v.size_bytes)
    reason = (f"fastest int8 variant (within 5 %, then the smallest) within {max_auc_drop} AUC and {max_acc_drop} "
              f"ACC of fp32 on validation and faster than fp32 ONNX Runtime "
              f"({best.images_per_s_b256 / fp32_onnx:.2f}x at batch 256)")
    return QuantizationReport(variants, best.name, reason)


def markdown_table(report: QuantizationReport) -> str:
    rows = ["| variant | size (KiB) | smaller | img/s b1 | img/s b32 | img/s b256 | speed-up b256 | val dAUC | val dACC | "
            "test AUC | dAUC | test ACC | dACC |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for v in report.variants:
        mark = " (registered)" if v.name == report.best_int8 else ""
        rows.append(f"| {v.name}{mark} | {v.size_bytes / 1024:.0f} | {v.smaller:.2f}x | {_num(v.images_per_s_b1, '.0f')} | "
                    f"{_num(v.images_per_s_b32, '.0f')} | {_num(v.images_per_s_b256, '.0f')} | "
                    f"{_num(v.speedup_b256, '.2f', 'x')} | {_num(v.delta_val_auc, '+.4f')} | "
                    f"{_num(v.delta_val_acc, '+.4f')} | {_num(v.test_auc, '.4f')} | {_num(v.delta_auc, '+.4f')} | "
                    f"{_num(v.test_acc, '.4f')} | {_num(v.delta_acc, '+.4f')} |")
    if any(math.isnan(v.test_auc) for v in report.variants):
        rows.append(f"\n-: not measured, the variant being no faster than fp32 ONNX Runtime (`quantize.evaluate`); "
                    f"at batch 256 and batch 1 also not timed when under {SCREEN_RATIO}x its speed at batch {SCREEN_BATCH}")
    return "\n".join(rows)


def _num(value: float, spec: str, unit: str = "") -> str:
    return "-" if math.isnan(value) else format(value, spec) + unit


def file_of(report: QuantizationReport, out_dir: Path, name: str) -> Path:
    for v in report.variants:
        if v.name == name and v.file:
            return Path(out_dir) / v.file
    raise MedopsError(f"no quantized file for variant {name!r}")
