"""reports/summary.md: every dataset x architecture against the MedMNIST v2 figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

from medops import paths
from medops.config import Params
from medops.files import write_text

# MedMNIST v2 (Scientific Data, 2023), test split, ResNet-18 (28) / ResNet-18+3D: (AUC, ACC)
REFERENCE = {
    "pathmnist": (0.983, 0.907), "chestmnist": (0.768, 0.947), "dermamnist": (0.917, 0.735),
    "octmnist": (0.943, 0.743), "pneumoniamnist": (0.944, 0.854), "retinamnist": (0.717, 0.524),
    "breastmnist": (0.901, 0.863), "bloodmnist": (0.998, 0.958), "tissuemnist": (0.930, 0.676),
    "organamnist": (0.997, 0.935), "organcmnist": (0.992, 0.900), "organsmnist": (0.972, 0.782),
    "organmnist3d": (0.996, 0.907), "nodulemnist3d": (0.863, 0.844), "adrenalmnist3d": (0.827, 0.721),
    "fracturemnist3d": (0.726, 0.494), "vesselmnist3d": (0.874, 0.877), "synapsemnist3d": (0.820, 0.745),
}


def fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def summary_rows(params: Params) -> list[dict]:
    rows = []
    for flag in params.experiments:
        path = paths.training_metrics_file(flag)
        trained = json.loads(path.read_text()) if path.exists() else {}
        champion = trained.get("champion_version")
        for arch in params.archs(flag):
            m = trained.get(arch)
            ref = REFERENCE.get(flag, (None, None))
            details = paths.training_dir(flag) / arch / "metrics.json"
            extra = json.loads(details.read_text()) if m and details.exists() else {}
            seeds = extra.get("seeds") or {}
            quant = (extra.get("quantization") or {})
            rows.append({
                "flag": flag, "arch": arch, "trained": m is not None,
                "val_auc": m and m["val_auc"], "val_acc": m and m["val_acc"],
                "test_auc": m and m["test_auc"], "test_acc": m and m["test_acc"],
                "version": m and m["version"], "champion": bool(m and champion == m["version"]),
                "ref_auc": ref[0], "ref_acc": ref[1],
                "seeds_auc": seeds and f"{seeds['auc_mean']:.3f} ± {seeds['auc_std']:.3f} ({seeds['n']})",
                "seeds_acc": seeds and f"{seeds['acc_mean']:.3f} ± {seeds['acc_std']:.3f} ({seeds['n']})",
                "int8": _int8(quant), "form": (extra.get("form") or {}).get("name"),
            })
    return rows


def _int8(quant: dict) -> str | None:
    """The registered int8 variant's test deltas and speed, or why none was registered."""
    chosen = next((v for v in quant.get("variants", []) if v["name"] == quant.get("best_int8")), None)
    if chosen is None:
        return "none" if quant.get("variants") else None
    return (f"{chosen['delta_auc']:+.4f} AUC, {chosen['delta_acc']:+.4f} ACC, "
            f"{chosen['speedup_b256']:.1f}x")


def write_summary(params: Params, out: Path = paths.REPORTS / "summary.md") -> Path:
    lines = [
        "# Model summary",
        "",
        "Validation and test metrics of each dataset's registered model per architecture (test evaluated once), "
        "beside the MedMNIST v2 ResNet-18 (28) / ResNet-18+3D test figures. **champion** marks the "
        "registry's `champion` alias. Single runs: differences of 0.01-0.03 on these small sets are noise, "
        "hence test AUC and ACC over seeds (the best recipe retrained; mean ± std, runs). ACC is MedMNIST's "
        "rule (argmax; 0.5 for binary and multi-label) on probabilities whose class-weight prior was undone "
        "(`train.logit_adjust`). int8: the registered int8 variant's test AUC and ACC change and CPU speed-up "
        "at batch 256 against fp32 eager. form: the registered model, the study's model alone or the average of the "
        "seed runs, with or without flip test-time augmentation, whichever won on validation (`ensemble`); seed "
        "figures are single models (none: no variant was accurate and faster than fp32 ONNX Runtime; "
        "the model card says why). Model cards: `reports/<flag>/model_card.md`.",
        "",
        "| dataset | architecture | form | val AUC | val ACC | test AUC | test ACC | test AUC, seeds | test ACC, seeds "
        "| MedMNIST v2 AUC | MedMNIST v2 ACC | Δ test AUC | Δ test ACC | int8 | version |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary_rows(params):
        known = r["trained"] and r["ref_auc"] is not None
        delta = f"{r['test_auc'] - r['ref_auc']:+.3f}" if known else "-"
        delta_acc = f"{r['test_acc'] - r['ref_acc']:+.3f}" if known else "-"
        version = "-" if not r["trained"] else f"v{r['version']}" + (" **champion**" if r["champion"] else "")
        lines.append(
            f"| {r['flag']} | {r['arch']} | {r['form'] or '-'} | {fmt(r['val_auc'])} | {fmt(r['val_acc'])} | {fmt(r['test_auc'])} | "
            f"{fmt(r['test_acc'])} | {r['seeds_auc'] or '-'} | {r['seeds_acc'] or '-'} | {fmt(r['ref_auc'])} | "
            f"{fmt(r['ref_acc'])} | {delta} | {delta_acc} | {r['int8'] or '-'} | {version} |"
        )
    write_text(out, "\n".join(lines) + "\n")
    return out
