"""Test AUC/ACC of the default recipe over several seeds, next to the MedMNIST v2 figures and goals.

    python bench/quality.py [--seeds 0 1 2] [--runs breastmnist:improved_cnn ...] [--set lr=3e-4]
    python bench/quality.py --defaults     # every dataset as if params.yaml listed it by name only
    python bench/quality.py --defaults --tune   # ... with the study `make run` would run first

Needs data/processed/<flag> (run `make run` first). Each run trains with the recipe the
pipeline uses for that dataset (train + experiments.<flag>.train in params.yaml, plus any
--set overrides; a dataset without an experiments entry gets the default recipe) and no
tuning; test metrics come from the best validation checkpoint, with the prior correction
validation chose. Without --runs: every architecture of every dataset in experiments.
Prints mean +- std per (dataset, architecture), the reference and whether the goal is met
(the quality goals for the shipped sets; the MedMNIST v2 ResNet-18 figures for any other, and
for every set under --defaults, the bar a dataset added with no recipe of its own must clear), and
the seed runs averaged as one model, with and without flip TTA (test; --json adds validation).
With --tune, each (dataset, architecture) first runs its Optuna study as the pipeline would
(tune section, n_trials, search space) and the seeds retrain the best trial's recipe (with
early stopping, like every run here; the pipeline's seed runs train the best trial's epoch count).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import optuna

from medops import paths
from medops.config import ExperimentParams, TrainParams, load_params, parse_settings, validate_section, with_dotted
from medops.evaluation.forms import Form, evaluate_form
from medops.runs import train_and_evaluate
from medops.training.tune import run_study, with_values
from medops.lifecycle.report import REFERENCE

# Mean of 3 seeds, test split, 28 px: (AUC, ACC) to reach; other sets: the MedMNIST v2 figures.
GOALS = {"breastmnist": (0.92, 0.88), "pneumoniamnist": (0.975, 0.92), "adrenalmnist3d": (0.89, 0.84)}


def fmt(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0:.3f}"


def tuned(params, flag: str, arch: str, recipe: TrainParams, root: Path) -> TrainParams:
    """The recipe of the best trial of the study `make run` would run for this pair."""
    base = recipe.model_copy(update={"arch": arch})
    storage = f"sqlite:///{root / 'optuna.db'}"
    result = run_study(paths.processed_dir(flag), base, params.study_budget(flag), f"{flag}-{arch}",
                       storage, root / "trials")
    for t in optuna.load_study(study_name=f"{flag}-{arch}", storage=storage).trials:
        print(f"  trial {t.number} {t.state.name.lower()}: {t.value if t.value is None else round(t.value, 4)} "
              f"{t.params}{' (recipe as written)' if t.user_attrs.get('recipe_as_written') else ''}", flush=True)
    print(f"{flag}:{arch} study: best trial {result.best_trial} of {result.n_complete} "
          f"({result.n_pruned} pruned), validation {result.best_value:.3f}, {result.best_params}", flush=True)
    return with_values(base, result.best_params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", help="flag:arch pairs (default: params.yaml experiments)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="train key=value")
    parser.add_argument("--json", type=Path, help="also write all results here")
    parser.add_argument("--tune", action="store_true", help="run the study first; seeds train its best recipe")
    parser.add_argument("--defaults", action="store_true",
                        help="ignore experiments entries: the recipe and architecture of a dataset listed by name only")
    args = parser.parse_args()
    params = load_params()
    if args.defaults:  # what a new user gets for a set nobody tuned: the pipeline's own defaults
        params = params.model_copy(update={"experiments": {flag: ExperimentParams() for flag in params.data.datasets}})
    runs = args.runs or [f"{flag}:{arch}" for flag in params.experiments for arch in params.archs(flag)]

    for flag in {run.split(":")[0] for run in runs}:  # listed by name only: the default recipe
        params.experiments.setdefault(flag, ExperimentParams())

    rows, everything = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            flag, arch = run.split(":")
            aucs, accs, checkpoints = [], [], []
            recipe = with_values(params.recipe(flag, arch), parse_settings(args.overrides))
            if args.tune:
                recipe = tuned(params, flag, arch, recipe, Path(tmp) / f"{flag}-{arch}-study")
                everything[f"{run}:study"] = {"params": recipe.model_dump(mode="json")}
            for seed in args.seeds:
                section = with_dotted({**recipe.model_dump(), "arch": arch, "seed": seed, "resume": False},
                                      parse_settings(args.overrides))
                cfg = validate_section(TrainParams, section, "train")
                out = Path(tmp) / f"{flag}-{arch}-{seed}"
                result, summary = train_and_evaluate(paths.processed_dir(flag), cfg, out, out)
                checkpoints.append(result.checkpoint)
                aucs.append(summary["test"]["auc"])
                accs.append(summary["test"]["acc"])
                everything[f"{run}:{seed}"] = {
                    **{split: {k: summary[split][k] for k in ("auc", "acc")} for split in ("val", "test")},
                    "best_epoch": summary["best_epoch"], "seconds": summary["seconds"]}
                print(f"{run} seed {seed}: test AUC {aucs[-1]:.3f} ACC {accs[-1]:.3f} "
                      f"(best epoch {summary['best_epoch']} of {summary['epochs']}, patience {summary['patience']}, "
                      f"{summary['seconds']:.0f}s)", flush=True)
            # the seed runs as one model (what `ensemble` may register when validation prefers it)
            forms = {}
            for flip in (False, True):
                ev = evaluate_form(Form(tuple(checkpoints), flip), paths.processed_dir(flag))
                forms[flip] = f"{ev['test']['metrics']['auc']:.3f} / {ev['test']['metrics']['acc']:.3f}"
                everything[f"{run}:ensemble{'+flip' if flip else ''}"] = {
                    split: {k: ev[split]["metrics"][k] for k in ("auc", "acc")} for split in ("val", "test")}
            ref = REFERENCE.get(flag)
            goal = ref if args.defaults else GOALS.get(flag, ref)
            met = goal and (statistics.mean(aucs) >= goal[0], statistics.mean(accs) >= goal[1])
            rows.append((flag, arch, fmt(aucs), fmt(accs), f"{ref[0]:.3f} / {ref[1]:.3f}" if ref else "-",
                         f"{goal[0]:.3f} / {goal[1]:.3f}" if goal else "-",
                         " / ".join("met" if m else "NOT met" for m in met) if goal else "-", forms[False], forms[True]))

    print(f"\n| dataset | arch | test AUC (mean ± std, {len(args.seeds)} seeds) | test ACC | "
          "MedMNIST v2 ResNet-18 AUC / ACC | goal AUC / ACC | AUC / ACC goal | ensemble of the seeds AUC / ACC | "
          "ensemble + flip TTA |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.json:
        args.json.write_text(json.dumps(everything, indent=2))


if __name__ == "__main__":
    main()
