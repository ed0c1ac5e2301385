"""Seed runs side by side in child processes (training/side_by_side.py) against runs in this process."""

import json
import logging
import os
import subprocess
import sys
import time

import pytest
import torch

from medops.runs import seed_runs
from medops.training.checkpoint import load_checkpoint
from medops.training.loop import pin_speed_choices, train
from medops.training.side_by_side import RESULT, SideBySideFailed, processes_for, train_side_by_side
from tests.code.test_exiting import PROBE
from tests.conftest import REPO, fast_recipe, make_processed


def test_runs_side_by_side_train_exactly_as_they_would_alone(project, caplog):
    processed = make_processed("pneumoniamnist", samples=32)
    runs = [(fast_recipe(epochs=2, seed=seed, channels_last=False), project / f"side-{seed}") for seed in (1, 2)]
    with caplog.at_level(logging.INFO, logger="medops"):
        results = train_side_by_side(processed, runs, processes=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // 2))  # what each child ran on
    try:
        alone = [train(processed, cfg, project / f"alone-{cfg.seed}") for cfg, _ in runs]
    finally:
        torch.set_num_threads(threads)
    weights = []
    for (cfg, out), result, reference in zip(runs, results, alone):
        assert result["checkpoint"] == str(out / "best.pt") and result["best_epoch"] == reference.best_epoch
        side, own = load_checkpoint(out / "best.pt")["model"], load_checkpoint(reference.checkpoint)["model"]
        assert side.keys() == own.keys() and all(torch.equal(side[k], own[k]) for k in own)
        weights.append(side)
    assert not all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # the seeds reached the children
    epoch_lines = [r.getMessage() for r in caplog.records if r.name == "medops.training.side_by_side"]
    # each child's log came back, saying which run it is
    assert sorted(line.split(":")[0] for line in epoch_lines if "epoch 2:" in line) == ["side-1", "side-2"]


def test_a_failed_run_stops_the_others_and_the_error_quotes_it(project):
    processed = make_processed("pneumoniamnist", samples=32)
    good, bad = project / "good", project / "bad"
    bad.mkdir()
    (bad / "last.pt").write_bytes(b"not a checkpoint")  # a resumed run reads it first
    runs = [(fast_recipe(epochs=500, seed=1), good), (fast_recipe(epochs=2, seed=2), bad)]
    with pytest.raises(SideBySideFailed) as failed:
        train_side_by_side(processed, runs, processes=2)
    assert f"training run in {bad} failed (exit code 1)" in str(failed.value)
    assert f"error: {bad / 'last.pt'}: not a readable medops checkpoint" in str(failed.value)
    assert not (good / RESULT).exists()  # stopped long before its 500 epochs
    # and stopped for good: a run still going would write last.pt every epoch
    before = (good / "last.pt").stat().st_mtime_ns if (good / "last.pt").exists() else None
    time.sleep(3)
    assert ((good / "last.pt").stat().st_mtime_ns if (good / "last.pt").exists() else None) == before


def test_seed_runs_in_turn_and_side_by_side_agree(project):
    processed = make_processed("breastmnist", samples=32)
    recipe = fast_recipe(epochs=2)
    side = seed_runs(processed, pin_speed_choices(processed, recipe), 2, [3, 4], project / "side", processes=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // 2))
    try:
        in_turn = seed_runs(processed, recipe, 2, [3, 4], project / "turn", processes=1)
    finally:
        torch.set_num_threads(threads)
    assert [r["seed"] for r in side] == [3, 4] == [r["seed"] for r in in_turn]
    for a, b in zip(side, in_turn):
        assert (a["auc"], a["acc"], a["best_epoch"]) == (b["auc"], b["acc"], b["best_epoch"])
        assert a["checkpoint"] == str(project / "side" / f"seed-{a['seed']}" / "best.pt")


@pytest.mark.parametrize("choice,runs,device,threads,expected", [
    ("auto", 2, "cpu", 2, 2),
    ("auto", 2, "cpu", 1, 1),  # one thread to share: in turn
    ("auto", 4, "cpu", 2, 2),
    ("auto", 1, "cpu", 8, 1),
    ("auto", 2, "cuda", 8, 1),  # the runs would share one device
    (3, 2, "cpu", 1, 2),  # asked for: at most one per run
    (1, 2, "cpu", 8, 1),
])
def test_how_many_runs_go_side_by_side(choice, runs, device, threads, expected):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert processes_for(choice, runs, device) == expected
    finally:
        torch.set_num_threads(before)


def test_a_child_run_says_what_failed_and_freezes_its_heap_on_the_way_out(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"processed": str(tmp_path / "nowhere"), "config": fast_recipe().model_dump(mode="json"),
                                "out": str(tmp_path / "out"), "threads": 1, "parent": os.getpid()}))
    entry = "runpy.run_module('medops.training.side_by_side', run_name='__main__', alter_sys=True)"
    done = subprocess.run([sys.executable, "-c", PROBE + entry, "side_by_side", str(spec)], cwd=REPO, text=True,
                          capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert done.returncode == 1, done.stderr
    assert f"error: {tmp_path / 'nowhere' / 'meta.json'}: not found" in done.stdout
    recorded = json.loads((tmp_path / "out" / RESULT).read_text())  # for a parent that goes on (Optuna trials)
    assert recorded["error"].startswith("DataError: ") and "nowhere" in recorded["error"]
    assert recorded["infrastructure"] is False
    frozen = int(done.stdout.split("frozen objects at exit:")[1].split()[0])
    assert frozen > 10_000  # torch and the trainer were imported: the heap is large, and frozen
