"""Training with glibc's malloc as it is against freed memory kept for reuse (medops.memory), in
one run: each default study's recipe trained for a few epochs in a fresh process each way
(MEDOPS_KEEP_FREED_MEMORY=0 for "as is"), the two ways in turn, `--rounds` times.

    python bench/page_faults.py [--epochs 3] [--rounds 2] [--flags adrenalmnist3d pneumoniamnist]

Needs data/processed/<flag> (run `make run` first). Prints, per dataset and way, the median
seconds of a training epoch, the process's system seconds, minor page faults and peak memory,
the ratio of epoch seconds (as is / kept), and whether both ways kept the same weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from medops import memory

WAYS = ("as is", "kept")


def child(way: str, flag: str, epochs: int, out: Path) -> None:
    import torch

    from medops import paths
    from medops.config import load_params
    from medops.training.loop import train

    params = load_params()
    arch = params.experiments[flag].archs[0]
    # fp32 in a fixed layout: both ways then run the same kernels and must keep the same weights
    cfg = params.recipe(flag, arch).model_copy(update={"epochs": epochs, "patience": epochs, "amp": False,
                                                       "channels_last": True})
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = train(paths.processed_dir(flag), cfg, out)
    after = resource.getrusage(resource.RUSAGE_SELF)
    state = torch.load(result.checkpoint, weights_only=True)["model"]
    digest = hashlib.sha256(b"".join(t.numpy().tobytes() for t in state.values())).hexdigest()[:12]
    print(json.dumps({"arch": arch, "epoch_s": statistics.median(h["train_seconds"] for h in result.history),
                      "sys": after.ru_stime - before.ru_stime,
                      "faults": after.ru_minflt - before.ru_minflt, "peak_mib": after.ru_maxrss / 1024,
                      "weights": digest}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flags", nargs="+", default=["adrenalmnist3d", "pneumoniamnist", "breastmnist"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", nargs=3, metavar=("WAY", "FLAG", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        way, flag, out = args.child
        return child(way, flag, args.epochs, Path(out))

    runs: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for flag in args.flags:
            for round_ in range(args.rounds):
                for way in WAYS if round_ % 2 == 0 else WAYS[::-1]:  # neither way always goes first
                    out = Path(tmp) / way.replace(" ", "-")
                    shutil.rmtree(out, ignore_errors=True)
                    env = {**os.environ, memory.OPT_OUT: "0" if way == "as is" else "1"}
                    done = subprocess.run([sys.executable, __file__, "--epochs", str(args.epochs), "--child", way,
                                           flag, str(out)], capture_output=True, text=True, check=True, env=env)
                    runs.setdefault((flag, way), []).append(json.loads(done.stdout.splitlines()[-1]))

    print(f"{args.epochs} epochs per run, {args.rounds} runs each way, medians")
    print("| dataset | arch | way | s / epoch | system s | page faults | peak MiB | as is / kept | same weights |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    for flag in args.flags:
        med = {way: {k: statistics.median(r[k] for r in runs[flag, way])
                     for k in ("epoch_s", "sys", "faults", "peak_mib")} for way in WAYS}
        same = len({r["weights"] for way in WAYS for r in runs[flag, way]}) == 1
        ratio = med["as is"]["epoch_s"] / med["kept"]["epoch_s"]
        for way in WAYS:
            m = med[way]
            print(f"| {flag} | {runs[flag, way][0]['arch']} | {way} | {m['epoch_s']:.2f} | {m['sys']:.1f} | "
                  f"{m['faults']:,.0f} | {m['peak_mib']:.0f} | {f'**{ratio:.2f}x**' if way == 'kept' else ''} | "
                  f"{('yes' if same else 'NO') if way == 'kept' else ''} |")


if __name__ == "__main__":
    main()
