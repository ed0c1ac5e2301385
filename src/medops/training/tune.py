"""Optuna studies: search spaces from params, pruning on per-epoch validation, resumable.

One study per (dataset, architecture), named `<flag>-<arch>`, in an RDB storage (SQLite by
default, PostgreSQL or any Optuna RDB URL for several hosts). Rerunning continues the study:
finished trials are never lost, and a trial whose process died is retried with the same
parameters, resuming from its checkpoint (trial-<n>/ of the trial it retries). On a CPU a new
study's first trials, which the pruner cannot stop, can train side by side in child processes
(`tune.processes`, training/side_by_side.py); they are told to Optuna in order, as if in turn.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import optuna
from mlflow.exceptions import MlflowException
from optuna.exceptions import StorageInternalError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from medops.config import SearchDim, TrainParams, TuneParams, flatten_dotted, validate_section, with_dotted
from medops.data.processed import read_meta, split_size
from medops.errors import MedopsError
from medops.errors import redact
from medops.training.augment import applied
from medops.training.budget import AUTO, resolve_budget, resolve_width
from medops.training.loop import TrainResult, fingerprint, pin_speed_choices, resolve_device, train
from medops.training.models.catalog import check_fits
from medops.training.scoring import monitored
from medops.training.side_by_side import processes_for, train_side_by_side
from medops.training.store import CheckpointStore

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)
# Heartbeats and stale-trial retries are marked experimental, though stable since Optuna 2.8.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

HEARTBEAT_SECONDS = 2  # a dead worker's trial is failed (and retried) after GRACE_SECONDS
GRACE_SECONDS = 8
SCHEMA_ATTEMPTS = 5


# A tracking server, database or disk that failed under a trial says nothing about its
# parameters: the study stops with a clear error and the trial does not count against the budget.
INFRASTRUCTURE = (MlflowException, OSError, OperationalError, StorageInternalError)


class TrialFailure(abc.ABC):
    """Every other exception: the trial failed (diverged, ran out of memory...), the study goes
    on. An ABC so that `isinstance(exc, TrialFailure)` (Optuna's `catch`) can say "all but"."""

    @classmethod
    def __subclasshook__(cls, other):
        return not issubclass(other, INFRASTRUCTURE)


def tracking_error(what: str, exc: BaseException) -> str:
    return redact(f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")


class StudyFailed(MedopsError):
    """No trial of a study completed; the message carries the trials' errors."""


class TrialLogger(Protocol):
    """Where trial runs are recorded (MLflow in the pipeline); tune itself knows no tracker."""

    def trial(self, number: int, params: dict) -> contextlib.AbstractContextManager[Callable[[int, dict], None]]: ...

    def describe(self, facts: dict[str, str]) -> None:
        """Inside trial(): what the trial ran on (device, precision, layout)."""


class _NoLogger:
    @contextlib.contextmanager
    def trial(self, number: int, params: dict) -> Iterator[Callable[[int, dict], None]]:
        yield lambda epoch, record: None

    def describe(self, facts: dict[str, str]) -> None:
        pass


@dataclass
class StudyResult:
    study_name: str
    best_trial: int
    best_value: float
    best_params: dict
    best_epoch: int  # of the best trial's run: its checkpoint holds that epoch's weights
    checkpoint: Path
    n_complete: int
    n_pruned: int
    n_failed: int
    ran_on: dict  # the best trial's device, precision and layout (`auto` resolves them per host)


class RecipeFirst(optuna.samplers.BaseSampler):
    """TPE, after a first few trials that are set, not sampled. Trial 0 is the recipe as written
    (each dimension takes the recipe's own value where its range or choices admit it); trial n
    takes the n-th of each categorical dimension's other choices. A budget of three trials then
    tries both sides of a yes/no knob such as `augment.strength` instead of leaving it to chance.
    Keyed on the trial number the storage hands out, so workers sharing a study agree."""

    def __init__(self, seed: int, recipe: dict[str, Any]):
        self._tpe = optuna.samplers.TPESampler(seed=seed)
        self._recipe = recipe  # dotted key -> the recipe's value

    def infer_relative_search_space(self, study, trial):
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        own = self._recipe.get(param_name)
        choices = getattr(param_distribution, "choices", None)
        if choices is not None:
            order = [own, *(c for c in choices if c != own)] if own in choices else list(choices)
            if trial.number < len(order):
                return order[trial.number]
        elif trial.number == 0 and isinstance(own, (int, float)):
            if param_distribution.low <= own <= param_distribution.high:
                return own
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self._tpe.before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self._tpe.after_trial(study, trial, state, values)

    def reseed_rng(self):
        self._tpe.reseed_rng()


def best_trial(complete: list[FrozenTrial], min_gain: float) -> FrozenTrial:
    """The highest-scoring trial, unless the recipe as written scores within min_gain of it."""
    best = max(complete, key=lambda t: t.value)
    written = next((t for t in complete if t.user_attrs.get("recipe_as_written")), None)
    if written is not None and written is not best and best.value - written.value <= min_gain:
        log.info("trial %d beat the recipe as written (trial %d) by %.4f, not more than tune.min_gain %.4f: "
                 "keeping the recipe", best.number, written.number, best.value - written.value, min_gain)
        return written
    return best


def searched_defaults_resolved(base: TrainParams, space: dict[str, SearchDim], n_train: int, is_3d: bool) -> TrainParams:
    """The recipe with each searched `auto` (epochs, patience, width) replaced by the number it
    means for this data, and a searched `dropout: null` by the architecture's own dropout, so
    that trial 0 is the recipe as written: a number can be drawn from a range or a list of
    numbers, `auto` and null cannot (a list that holds `auto` keeps it). Keys not searched keep
    `auto`, which each trial resolves for its own recipe (`epochs: auto` for a searched batch size)."""
    epochs, patience = resolve_budget(base.epochs, base.patience, n_train, base.batch_size, is_3d)
    means = {"epochs": epochs, "patience": patience, "width": resolve_width(base.width, is_3d)}
    resolved = {k: v for k, v in means.items() if k in space and getattr(base, k) == AUTO
                and AUTO not in (space[k].choices or [])}  # `auto` a choice: drawn as it is
    if "dropout" in space and base.dropout is None:
        resolved["dropout"] = check_fits(base.arch, is_3d).default_dropout()
    return base.model_copy(update=resolved)


def search_space(tune: TuneParams, base: TrainParams, task: str, is_3d: bool) -> dict[str, SearchDim]:
    """The study's dimensions for this recipe: tune.space plus the architecture's and the task
    type's, less any augmentation choice that would train the same thing whichever is picked
    (`augment.strength` on a 3D set, or on a recipe whose rotation, shift and zoom are 0 or whose
    `augment.affine_p` is 0)."""
    space = {**tune.space, **tune.arch_space.get(base.arch, {}), **tune.task_space.get(task, {})}
    for key, dim in list(space.items()):
        if key.startswith("augment.") and dim.type == "categorical":
            if len({applied(with_values(base, {key: c}).augment, is_3d) for c in dim.choices}) == 1:
                log.info("%s is left out of the search: every choice trains the same augmentation here", key)
                del space[key]
    return space


def suggest(trial: optuna.Trial, space: dict[str, SearchDim]) -> dict[str, Any]:
    values = {}
    for key, dim in space.items():
        if dim.type == "float":
            values[key] = trial.suggest_float(key, dim.low, dim.high, log=dim.log)
        elif dim.type == "int":
            values[key] = trial.suggest_int(key, int(dim.low), int(dim.high), log=dim.log)
        else:
            values[key] = trial.suggest_categorical(key, dim.choices)
    return values


def with_values(base: TrainParams, values: dict[str, Any]) -> TrainParams:
    """The base recipe with dotted keys (augment.rotation, ...) replaced."""
    return validate_section(TrainParams, with_dotted(base.model_dump(), values), "train")


def storage_for(url: str) -> RDBStorage:
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    if url.startswith("sqlite:///"):  # mlruns/ does not exist yet when tracking is a remote server
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # Workers that open a new database at once all try to create Optuna's tables; the losers
    # fail on what the winner made (PostgreSQL: duplicate type or relation) and find the schema
    # in place when they try again.
    for attempt in range(1, SCHEMA_ATTEMPTS):
        try:
            return _rdb_storage(url, engine)
        except (IntegrityError, ProgrammingError, OperationalError) as exc:
            if not _schema_race(exc):
                raise
            log.info("another worker is creating the Optuna tables in %s; trying again", redact(url))
            time.sleep(0.2 * attempt + random.random() * 0.3)
    return _rdb_storage(url, engine)


def _rdb_storage(url: str, engine: dict) -> RDBStorage:
    return RDBStorage(
        url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2, inherit_intermediate_values=True),
    )


def _schema_race(exc: Exception) -> bool:
    return isinstance(exc, IntegrityError) or "already exists" in str(exc)


def open_study(name: str, storage: str, tune: TuneParams, basis: str | None = None,
               recipe: TrainParams | None = None) -> optuna.Study:
    """Create or continue a study. `basis` identifies the base recipe and the data its trials
    were trained on: a study run on another basis (a changed params.yaml recipe, another file,
    other classes) is started over, since its trials' scores and checkpoints do not apply; their
    MLflow runs keep the record. So is a study with trials but no recorded basis."""
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=tune.pruner.n_startup_trials,
                                    n_warmup_steps=tune.pruner.n_warmup_steps)
        if tune.pruner.type == "median" else optuna.pruners.NopPruner()
    )
    rdb = storage_for(storage)
    study = optuna.create_study(study_name=name, storage=rdb, direction="maximize", load_if_exists=True, pruner=pruner)
    recorded = study.user_attrs.get("basis")
    if basis is not None and recorded != basis and study.get_trials(deepcopy=False):
        log.warning("study %s was run on another recipe or other data (%s, now %s): starting it over",
                    name, recorded or "not recorded", basis)
        optuna.delete_study(study_name=name, storage=rdb)
        study = optuna.create_study(study_name=name, storage=rdb, direction="maximize", load_if_exists=True,
                                    pruner=pruner)
    if basis is not None and recorded != basis:  # new, started over, or made before bases were recorded
        study.set_user_attr("basis", basis)
    # Seeded by the study's progress, so a resumed study does not replay the first random
    # suggestions; a second worker running beside this one also gets its own stream.
    existing = study.get_trials(deepcopy=False)
    offset = os.getpid() if any(t.state == TrialState.RUNNING for t in existing) else 0
    recipe_values = flatten_dotted(recipe.model_dump()) if recipe is not None else {}
    study.sampler = RecipeFirst(seed=tune.seed + len(existing) + offset, recipe=recipe_values)
    return study


def trial_recipe(trial: optuna.Trial, base: TrainParams, space: dict[str, SearchDim]) -> TrainParams:
    """The trial's recipe: the base with the trial's sampled values."""
    cfg = with_values(base, suggest(trial, space))
    if cfg == base:  # the baseline a tuned recipe must beat (best_trial)
        trial.set_user_attr("recipe_as_written", True)
    # a trial first trained in a child process keeps the layout and precision pinned for it,
    # so that its retry has the same fingerprint and resumes its checkpoint
    return cfg.model_copy(update=trial.user_attrs.get("speed_choices", {}))


def trial_dir(trial: optuna.Trial, trials_root: Path) -> Path:
    """Where the trial's checkpoints go. A retried trial (its worker died) inherits the
    original's folder and resumes there, on this host or, through the store, on another."""
    name = Path(trial.user_attrs.get("checkpoint_dir") or f"trial-{trial.number}").name
    trial.set_user_attr("checkpoint_dir", name)
    return Path(trials_root) / name


RAN_ON = ("device", "precision", "layout")  # trial user attributes: what a trial trained on


def ran_on(device: str, precision: str, layout: str) -> dict[str, str]:
    """What `device`, `amp` and `channels_last` resolved to on this host."""
    return dict(zip(RAN_ON, (device, precision, layout)))


def record_result(trial: optuna.Trial, facts: dict[str, str], best_epoch: int, seconds: float) -> None:
    trial.set_user_attr("best_epoch", best_epoch)
    for key, value in facts.items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("seconds", round(seconds, 2))


def side_by_side_trials(tune: TuneParams, device: str) -> int:
    """How many of a new study's first trials train side by side: as `tune.processes` allows
    on this device (training/side_by_side.processes_for), and no more than the pruner leaves
    unpruned anyway. MedianPruner prunes nothing until n_startup_trials trials have completed
    (nor the first trial), so those trials, their samples and everything after them are what a
    run in turn gives."""
    n = processes_for(tune.processes, tune.n_trials, device)
    if tune.pruner.type == "median":
        n = min(n, max(1, tune.pruner.n_startup_trials))
    return n


class _ChildTrialFailed(Exception):
    """A side-by-side trial's error, raised where its MLflow run records it."""


def first_trials_side_by_side(study: optuna.Study, n: int, space: dict[str, SearchDim], processed: Path,
                              base: TrainParams, trials_root: Path, logger: TrialLogger) -> None:
    """Trials 0..n-1 of a new study, trained side by side in child processes. They are asked
    in order, so the sampler draws for them (and for the trials after them) what it would draw
    in turn. Their scores can differ in the last bits, since each child trains on its share of
    this process's threads (other kernels), and on a small validation split that can change
    which recipe the study keeps. While they train, this process keeps their Optuna
    heartbeats, so a killed run's trials are retried and resume like any other. Then, trial by
    trial, their epochs go to the trial's MLflow run and to Optuna (whose pruner judges later
    trials by them) and the result is told. A disk or other OS error in a child stops the
    study, as it would in turn."""
    pinned = pin_speed_choices(processed, base)  # timed once here; the children do not time again
    speed = {"channels_last": pinned.channels_last, "amp": pinned.amp}
    trials, runs = [], []
    for _ in range(n):
        with warnings.catch_warnings():  # "heartbeat is supposed to be used with optimize": it is kept below
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = study.ask()
        trial.set_user_attr("speed_choices", speed)
        runs.append((trial_recipe(trial, base, space), trial_dir(trial, trials_root)))
        trials.append(trial)
    log.info("study %s: trials %s side by side in %d processes", study.study_name,
             ", ".join(str(t.number) for t in trials), n)
    stopped = []
    with contextlib.ExitStack() as beating:  # until each is told: a stale trial would be failed and retried
        for trial in trials:  # optimize() beats for the trials it runs; these run elsewhere
            beating.enter_context(get_heartbeat_thread(trial._trial_id, study._storage))
        results = train_side_by_side(processed, runs, n, stop_on_failure=False)
        for trial, (cfg, _), result in zip(trials, runs, results):
            try:
                with logger.trial(trial.number, trial.params) as log_epoch:
                    for record in result.get("history", []):
                        log_epoch(record["epoch"], record)
                        trial.report(monitored(record, cfg.monitor), record["epoch"])
                    if "error" in result:
                        raise _ChildTrialFailed(result["error"])
                    facts = ran_on(result["device"], result["precision"], result["layout"])
                    logger.describe(facts)
            except _ChildTrialFailed:
                trial.set_user_attr("error", result["error"])
                if result["infrastructure"]:  # not the parameters' fault: does not count, study stops
                    trial.set_user_attr("infrastructure", True)
                    stopped.append(f"trial {trial.number}: {result['error']}")
                study.tell(trial, state=TrialState.FAIL)
                log.warning("study %s: trial %d failed: %s", study.study_name, trial.number, result["error"])
                continue
            record_result(trial, facts, result["best_epoch"], result["seconds"])
            study.tell(trial, result["best_score"])
    if stopped:
        raise StudyFailed(redact(f"study {study.study_name} stopped: " + "; ".join(stopped)))


def finished(study: optuna.Study) -> int:
    """Trials that count against the budget: completed, pruned, or failed, except a trial
    whose process died and that was queued again (its retry counts instead)."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(t.state in done and t.number not in retried and not t.user_attrs.get("infrastructure")
               for t in trials)


def _infrastructure_cause(exc: BaseException | None) -> BaseException | None:
    """The tracking, database or disk error behind exc, if any. Optuna can lose the original
    when the storage fails while it records a trial's end (an UnboundLocalError of its own)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, INFRASTRUCTURE):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _wait_for_running_trials(study: optuna.Study) -> None:
    """Until no trial of the study is running: other workers' trials count toward its best. A
    worker that died stops heart-beating; its trial is failed after GRACE_SECONDS and queued again."""
    while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        fail_stale_trials(study)
        time.sleep(HEARTBEAT_SECONDS)


def run_study(
    processed: Path, base: TrainParams, tune: TuneParams, study_name: str, storage: str,
    trials_root: Path, logger: TrialLogger | None = None, wait_for_others: bool = True,
    store: CheckpointStore | None = None,
) -> StudyResult | None:
    """Run (or continue) the study until tune.n_trials trials have finished. Other processes may
    run trials of the same study at the same time (tune.workers_per_study): with
    `wait_for_others` this one also waits for their running trials, so the result is the
    study's final best; without it, it returns None once the budget is met."""
    meta = read_meta(processed)  # fail early, before a study is created, if the data is missing
    logger = logger or _NoLogger()
    space = search_space(tune, base, meta.task, meta.is_3d)
    basis = fingerprint(base, meta)  # the recipe as written: resolving its `auto`s and nulls starts no study over
    base = searched_defaults_resolved(base, space, split_size(processed, "train"), meta.is_3d)
    try:
        study = open_study(study_name, storage, tune, basis, base)
    except (OperationalError, StorageInternalError) as exc:
        raise StudyFailed(tracking_error(f"study {study_name}: Optuna storage {redact(storage)} unreachable", exc)) from None

    def objective(trial: optuna.Trial) -> float:
        try:
            return run_trial(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            if isinstance(exc, INFRASTRUCTURE):  # not the parameters' fault: stop, retry on the next run
                trial.set_user_attr("infrastructure", True)
            raise

    def run_trial(trial: optuna.Trial) -> float:
        cfg = trial_recipe(trial, base, space)
        out = trial_dir(trial, trials_root)
        key = f"{study_name}/{out.name}"
        if store is not None:
            store.pull(key, out)
        with logger.trial(trial.number, trial.params) as log_epoch:
            def on_epoch(epoch: int, record: dict) -> None:
                if store is not None:
                    store.push(out, key)
                log_epoch(epoch, record)
                value = monitored(record, cfg.monitor)
                trial.report(value, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {epoch} ({cfg.monitor} {value:.4f})")

            result: TrainResult = train(processed, cfg, out, on_epoch=on_epoch)
            facts = ran_on(result.device, result.precision, result.layout)
            logger.describe(facts)
        record_result(trial, facts, result.best_epoch, result.seconds)
        return result.best_score

    def stop_at_budget(study: optuna.Study, _trial) -> None:
        if finished(study) >= tune.n_trials:
            study.stop()

    try:
        if finished(study) >= tune.n_trials:
            log.info("study %s: budget of %d trials already met", study_name, tune.n_trials)
        began = time.monotonic()
        side_by_side = side_by_side_trials(tune, resolve_device(base.device).type)
        if side_by_side > 1 and store is None and not study.get_trials(deepcopy=False):
            first_trials_side_by_side(study, side_by_side, space, processed, base, trials_root, logger)
        # tune.timeout counts the side-by-side trials too (optimize starts no trial past it)
        timeout = None if tune.timeout is None else max(0.001, tune.timeout - (time.monotonic() - began))
        while True:
            if finished(study) < tune.n_trials:
                log.info("study %s: %d of %d trials finished; running the rest", study_name, finished(study),
                         tune.n_trials)
                study.optimize(objective, timeout=timeout, callbacks=[stop_at_budget],
                               catch=(TrialFailure,), gc_after_trial=True)
            if not wait_for_others or tune.timeout is not None:
                break
            if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) and finished(study) >= tune.n_trials:
                break
            # other workers' trials count toward the best; a dead worker's comes back WAITING: run it here
            _wait_for_running_trials(study)
        if not wait_for_others:
            return None
    except Exception as exc:
        cause = _infrastructure_cause(exc)
        if cause is None:
            raise
        if isinstance(cause, (OperationalError, StorageInternalError)):
            cause = _infrastructure_cause(cause.__cause__) or cause  # the driver's own words
            raise StudyFailed(tracking_error(f"study {study_name} stopped: Optuna storage {redact(storage)} failed",
                                             cause)) from None
        raise StudyFailed(tracking_error(f"study {study_name} stopped", cause)) from None

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL and "error" in t.user_attrs]
    if not complete:
        errors = "\n".join(f"  trial {t.number}: {t.user_attrs['error']}" for t in failed) or "  (none recorded)"
        raise StudyFailed(f"study {study_name}: no trial completed. Errors:\n{errors}")
    best = best_trial(complete, tune.min_gain)
    best_dir = Path(trials_root) / Path(best.user_attrs["checkpoint_dir"]).name
    if store is not None:  # it may have been trained on another host
        store.pull(f"{study_name}/{best_dir.name}", best_dir)
    return StudyResult(
        study_name=study_name, best_trial=best.number, best_value=best.value, best_params=best.params,
        best_epoch=int(best.user_attrs["best_epoch"]),
        checkpoint=best_dir / "best.pt", n_complete=len(complete),
        n_pruned=sum(t.state == TrialState.PRUNED for t in trials), n_failed=len(failed),
        ran_on={k: best.user_attrs[k] for k in RAN_ON if k in best.user_attrs},
    )
