"""Which epoch a run keeps: `train.select: best` against `one_se`, replayed on the same runs.

    python bench/selection.py [--runs breastmnist:baseline_cnn ...] [--seeds 0 1 2] [--defaults]

Needs data/processed/<flag> (run `make run` first). Each (dataset, architecture, seed) trains
once, with the recipe the pipeline uses (as bench/quality.py; --defaults: as if params.yaml
listed the dataset by name only) and without early stopping; after every epoch its weights are
scored on validation, which is all a rule sees, and on test, which is what the rule is judged
by. Each rule then replays the run as the trainer would (`training/scoring.EpochSelector`): the
epoch it keeps, where the recipe's patience stops it, and the prior correction that validation
chooses at that epoch (`task_rules.choose_prior_strength`). Prints test AUC / ACC, mean ± std
over the seeds, per rule, with the epochs each rule trains.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from medops import paths
from medops.config import ExperimentParams, TrainParams, load_params, parse_settings, validate_section, with_dotted
from medops.data.processed import read_meta
from medops.task_rules import PRIOR_STRENGTHS, choose_prior_strength
from medops.training.batches import Normalizer, load_tensors
from medops.training.budget import resolve_budget
from medops.training.checkpoint import load_checkpoint
from medops.training.loop import LAST, input_spec, model_options, prior_correction, train
from medops.training.models import build_model
from medops.training.scoring import EpochSelector, auc_and_acc, predict_scores, windowed
from medops.training.tune import with_values

RULES = ("best", "one_se")


def trajectory(flag: str, cfg: TrainParams, out: Path) -> tuple[list[dict], int, np.ndarray]:
    """Every epoch's validation record, validation scores and test AUC / ACC per prior strength;
    with the recipe's resolved patience and the validation labels."""
    processed = paths.processed_dir(flag)
    meta = read_meta(processed)
    cpu = torch.device("cpu")
    val, test = load_tensors(processed, "val", cpu), load_tensors(processed, "test", cpu)
    n_train = len(load_tensors(processed, "train", cpu))
    epochs, patience = resolve_budget(cfg.epochs, cfg.patience, n_train, cfg.batch_size, meta.is_3d)
    norm = Normalizer(meta, cpu)
    model = build_model(cfg.arch, input_spec(meta), **model_options(cfg, meta.is_3d))
    full = prior_correction(cfg, meta)
    offsets = {s: torch.tensor(full) * s for s in PRIOR_STRENGTHS} if full else {0.0: None}
    epochs_seen = []

    def score_epoch(epoch: int, record: dict) -> None:
        model.load_state_dict(load_checkpoint(out / LAST)["model"])
        row = {"record": record, "val": {}, "test": {}}
        for s, offset in offsets.items():
            row["val"][s] = predict_scores(model, val, norm, meta.task, offset=offset)[0]
            row["test"][s] = auc_and_acc(test.y.numpy(), predict_scores(model, test, norm, meta.task, offset=offset)[0],
                                         meta.task)
        epochs_seen.append(row)

    train(processed, cfg.model_copy(update={"epochs": epochs, "patience": epochs + 1}), out, on_epoch=score_epoch)
    return epochs_seen, patience, val.y.numpy()


def replay(rows: list[dict], rule: str, cfg: TrainParams, patience: int, y_val: np.ndarray, task: str):
    """(test AUC, test ACC, kept epoch, epochs trained) of one rule on one recorded run."""
    selector = EpochSelector(rule, cfg.monitor, len(y_val), patience)
    history = []
    for epoch, row in enumerate(rows, 1):
        history.append(row["record"])
        selector.observe(epoch, windowed(history, cfg.monitor, cfg.monitor_window))
        if selector.stopped:
            break
    row = rows[selector.best_epoch - 1]
    strength = choose_prior_strength(y_val, row["val"], task) if len(row["val"]) > 1 else 0.0
    auc, acc = row["test"][strength]
    return auc, acc, selector.best_epoch, len(history)


def fmt(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", help="flag:arch pairs (default: params.yaml experiments)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="train key=value")
    parser.add_argument("--defaults", action="store_true",
                        help="ignore experiments entries: the recipe and architecture of a dataset listed by name only")
    args = parser.parse_args()
    params = load_params()
    if args.defaults:
        params = params.model_copy(update={"experiments": {flag: ExperimentParams() for flag in params.data.datasets}})
    runs = args.runs or [f"{flag}:{arch}" for flag in params.experiments for arch in params.archs(flag)]
    for flag in {run.split(":")[0] for run in runs}:
        params.experiments.setdefault(flag, ExperimentParams())

    print("| dataset | arch | rule | test AUC | test ACC | kept epochs | epochs trained |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            flag, arch = run.split(":")
            recipe = with_values(params.recipe(flag, arch), parse_settings(args.overrides))
            meta = read_meta(paths.processed_dir(flag))
            results = {rule: [] for rule in RULES}
            for seed in args.seeds:
                section = with_dotted({**recipe.model_dump(), "arch": arch, "seed": seed, "resume": False},
                                      parse_settings(args.overrides))
                cfg = validate_section(TrainParams, section, "train")
                rows, patience, y_val = trajectory(flag, cfg, Path(tmp) / f"{flag}-{arch}-{seed}")
                for rule in RULES:
                    results[rule].append(replay(rows, rule, cfg, patience, y_val, meta.task))
                print(f"<!-- {run} seed {seed}: " + "; ".join(
                    f"{rule} epoch {results[rule][-1][2]} of {results[rule][-1][3]}, test {results[rule][-1][0]:.3f} / "
                    f"{results[rule][-1][1]:.3f}" for rule in RULES) + " -->", flush=True)
            for rule in RULES:
                aucs, accs, kept, trained = zip(*results[rule])
                print(f"| {flag} | {arch} | {rule} | {fmt(aucs)} | {fmt(accs)} | {', '.join(map(str, kept))} | "
                      f"{sum(trained)} |", flush=True)


if __name__ == "__main__":
    main()
