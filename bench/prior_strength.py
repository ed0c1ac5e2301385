"""The decision rule's correction strength, looked at on test: every checkpoint `make run` trained.

    python bench/prior_strength.py [--flags breastmnist pneumoniamnist adrenalmnist3d]

Needs a finished `make run`. For each class-weighted checkpoint under models/<flag>/ (study
trials and seed runs), prints validation and test ACC with 0, 0.5 and all of the class-weight
tilt undone (task_rules.PRIOR_STRENGTHS), the strength the one-standard-error rule chose on
validation, and per dataset how often each strength scored the best test ACC. Test is looked
at here only to judge the rule; the pipeline never chooses with it.
"""

from __future__ import annotations

import argparse
from collections import Counter
import torch
from medmnist.evaluator import getACC

from medops import paths
from medops.config import load_params
from medops.data.processed import read_meta
from medops.task_rules import PRIOR_STRENGTHS, logit_offset
from medops.training.batches import Normalizer, load_tensors
from medops.training.checkpoint import model_from_checkpoint
from medops.training.scoring import predict_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flags", nargs="+", help="default: every dataset of params.yaml")
    args = parser.parse_args()
    params = load_params()
    flags = args.flags or list(params.data.datasets)
    cpu = torch.device("cpu")
    print(f"ACC at correction strength {' / '.join(f'{s:g}' for s in PRIOR_STRENGTHS)}")
    for flag in flags:
        processed = paths.processed_dir(flag)
        meta = read_meta(processed)
        full, norm = torch.tensor(logit_offset(meta.class_weights)), Normalizer(meta, cpu)
        splits = {split: load_tensors(processed, split, cpu) for split in ("val", "test")}
        checkpoints = [checkpoint for arch in params.archs(flag)
                       for checkpoint in (sorted(paths.trials_dir(flag, arch).glob("trial-*/best.pt"))
                                          + sorted((paths.model_dir(flag, arch) / "seeds").glob("seed-*/best.pt")))]
        best_on_test = Counter()
        for checkpoint in checkpoints:
            model, saved = model_from_checkpoint(checkpoint, map_location=cpu)
            if saved.get("logit_offset") is None:
                continue  # not class-weighted, or trained with logit_adjust off: nothing to choose
            acc = {split: [float(getACC(data.y.numpy(), predict_scores(model, data, norm, meta.task, offset=full * s)[0],
                                        meta.task)) for s in PRIOR_STRENGTHS]
                   for split, data in splits.items()}
            best_on_test[PRIOR_STRENGTHS[max(range(len(PRIOR_STRENGTHS)), key=lambda i: (acc["test"][i], -i))]] += 1
            print(f"{checkpoint}: chosen {saved.get('prior_strength', 'not chosen')}, "
                  f"val {' / '.join(f'{a:.3f}' for a in acc['val'])}, test {' / '.join(f'{a:.3f}' for a in acc['test'])}",
                  flush=True)
        print(f"{flag}: best test ACC at strength " + ", ".join(f"{s:g}: {best_on_test[s]} of {sum(best_on_test.values())}"
                                                             for s in PRIOR_STRENGTHS) + "\n", flush=True)


if __name__ == "__main__":
    main()
