"""Typed view of params.yaml: the one place that reads it.

Unknown keys are rejected (``extra="forbid"``) so a typo fails before any work starts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medops.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")
MIRROR_ENV = "MEDOPS_MIRROR"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetParams(_Strict):
    size: int = 28
    # official: the file must match the md5 in medmnist.INFO and the split sizes INFO lists.
    # custom: a file of your own in the MedMNIST layout (md5 and split sizes not checked).
    source: Literal["official", "custom"] = "official"
    # Multi-label sets only: turn into single-label (first positive label, or "normal").
    single_label: bool = False


class DataParams(_Strict):
    mirror: str | None = None
    datasets: dict[str, DatasetParams] = Field(default_factory=dict)

    def mirror_dir(self) -> Path | None:
        """MEDOPS_MIRROR wins over params so CI and tests can point at a shared folder."""
        value = os.environ.get(MIRROR_ENV) or self.mirror
        return Path(value).expanduser() if value else None


class ValidationParams(_Strict):
    # Share of constant (blank) images allowed in any split.
    max_blank_fraction: float = Field(0.01, ge=0, le=1)
    # Share of a val/test split allowed to repeat an image of another split (leakage).
    max_leak_fraction: float = Field(0.02, ge=0, le=1)


class EdaParams(_Strict):
    samples_per_class: int = Field(8, ge=1, le=32)
    seed: int = 0


class AugmentParams(_Strict):
    """Batched, on-device augmentation. 2D: affine + flips; 3D: flips + 90-degree turns."""

    enabled: bool = True
    rotation: float = Field(10.0, ge=0, le=180)  # degrees, uniform in [-r, r]
    shift: float = Field(0.05, ge=0, le=0.5)  # fraction of the image side
    zoom: float = Field(0.05, ge=0, le=0.5)  # scale uniform in [1-z, 1+z]
    # scales rotation, shift and zoom together (0: flips only), one knob a study can search
    strength: float = Field(1.0, ge=0, le=1)
    # share of images that get the rotation, shift and zoom; the rest keep their own pixels (and
    # flips): resampling smooths every image it moves, and augmentation never resamples test images
    affine_p: float = Field(0.5, ge=0, le=1)
    hflip: float = Field(0.5, ge=0, le=1)  # probability
    vflip: float = Field(0.0, ge=0, le=1)
    rot90: bool = True  # 3D only: random multiples of 90 degrees in-plane
    # what a rotation/shift/zoom uncovers: the mirrored image, the edge pixels, or black
    padding: Literal["reflection", "border", "zeros"] = "reflection"


class TransferParams(_Strict):
    weights: str = "none"  # imagenet | none | path to a state dict
    finetune: Literal["frozen", "partial", "full"] = "full"
    resize_to: int = Field(64, ge=28)


# "auto": scaled with the training split and the input's dimensionality (training/budget.py)
Budget = Annotated[int, Field(ge=1)] | Literal["auto"]


class TrainParams(_Strict):
    arch: str = "baseline_cnn_pool_first"
    epochs: Budget = "auto"
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(1024, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "step", "none"] = "cosine"
    step_size: int = Field(10, ge=1)  # step schedule: epochs between decays
    gamma: float = Field(0.1, gt=0, le=1)
    grad_clip: float | None = Field(5.0, gt=0)  # max gradient norm; null turns clipping off
    patience: Budget = "auto"  # early stopping: epochs without improvement
    # validation metric for early stopping, checkpoint selection and studies; auc+acc is their mean
    monitor: Literal["auc+acc", "auc", "acc", "loss"] = "auc+acc"
    # early stopping and checkpoint selection read the mean of the monitored value over the
    # last this many epochs, so one lucky epoch on a small validation split is not kept
    monitor_window: int = Field(1, ge=1, le=20)
    # which epoch a run keeps: one_se, the latest whose monitored value is within one standard
    # error of the best (training/scoring.py: EpochSelector); best, the single highest one
    select: Literal["one_se", "best"] = "one_se"
    weighted_loss: bool = True  # class weights from the preprocess stage
    # with weighted_loss: subtract log(class weight) from the logits at prediction time, so the
    # probabilities are not tilted towards rare classes and the 0.5 / argmax rule maximises ACC
    logit_adjust: bool = True
    dropout: float | None = Field(None, ge=0, lt=1)  # null: the architecture's default
    # channel widths times this for the plain CNNs (baseline_cnn, improved_cnn, cnn3d and their
    # *_pool_first); auto: 2 for 2D data, 1 for 3D (training/budget.py); the other
    # architectures ignore it (README, Models)
    width: Annotated[float, Field(gt=0, le=8)] | Literal["auto"] = "auto"
    # ordinal tasks only (INFO's ordinal-regression): > 0 trains on soft ordinal targets with
    # this temperature (task_rules.SoftOrdinalLoss); 0 is plain cross-entropy. Other tasks ignore it.
    ordinal_smoothing: float = Field(0.0, ge=0, le=10)
    # > 0: validate and keep an exponential moving average of the weights with this half-life
    # in epochs (training/averaging.py); 0 keeps the trained weights themselves
    ema_half_life: float = Field(0.0, ge=0, le=100)
    augment: AugmentParams = Field(default_factory=AugmentParams)
    transfer: TransferParams = Field(default_factory=TransferParams)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # mixed precision of the training steps: on CUDA bf16 (fp16 without it) unless false; on a
    # CPU bf16 autocast if true, or for auto where a few timed training steps show it faster here
    amp: bool | Literal["auto"] = "auto"
    # channels-last tensors; auto: where a few timed training steps on this host show it faster
    channels_last: bool | Literal["auto"] = "auto"
    resume: bool = True  # continue from the last checkpoint of an identical run


class SearchDim(_Strict):
    """One searchable train key: a float or int range, or a list of choices."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list | None = None

    def check(self, key: str) -> None:
        if self.type == "categorical":
            if not self.choices:
                raise ConfigError(f"tune.space.{key}: categorical needs a non-empty choices list")
        elif self.low is None or self.high is None or self.low > self.high:
            raise ConfigError(f"tune.space.{key}: {self.type} needs low <= high (got {self.low}, {self.high})")


class PrunerParams(_Strict):
    type: Literal["median", "none"] = "median"
    n_startup_trials: int = Field(2, ge=0)  # trials run in full before pruning starts
    n_warmup_steps: int = Field(3, ge=0)  # epochs of each trial never pruned


class TuneParams(_Strict):
    # Optuna storage URL; null = sqlite under mlruns/. Any RDB URL (PostgreSQL...) for several hosts.
    storage: str | None = None
    n_trials: int = Field(4, ge=1)  # finished (complete or pruned) trials per study
    timeout: float | None = Field(None, gt=0)  # seconds per study and process
    # pool mode: flow runs sampling trials of one study at once; one of them then finishes it
    workers_per_study: int = Field(1, ge=1)
    # 1: trials in turn. n or auto (one per torch thread): a new study's first trials side by
    # side in child processes on a CPU, no more than the pruner leaves unpruned anyway
    # (n_startup_trials); each on its share of the threads, so with other scores (README)
    processes: Annotated[int, Field(ge=1)] | Literal["auto"] = 1
    seed: int = 0
    pruner: PrunerParams = Field(default_factory=PrunerParams)
    space: dict[str, SearchDim] = Field(default_factory=dict)  # for every architecture
    arch_space: dict[str, dict[str, SearchDim]] = Field(default_factory=dict)  # per architecture
    # added for one task type, as medmnist.INFO names it (ordinal-regression, multi-class, ...)
    task_space: dict[str, dict[str, SearchDim]] = Field(default_factory=dict)
    # the study's best trial replaces the recipe as written (trial 0) only when its validation
    # score is higher by more than this: on small validation splits such gaps are noise
    min_gain: float = Field(0.005, ge=0)


class MlflowParams(_Strict):
    # null = sqlite:///mlruns/mlflow.db; MLFLOW_TRACKING_URI overrides either.
    tracking_uri: str | None = None
    experiment_prefix: str = "medops"


class PromotionParams(_Strict):
    metric: Literal["auc+acc", "auc", "acc"] = "auc+acc"  # validation metric compared (auc+acc: their mean)
    min_delta: float = Field(0.0, ge=0)  # a challenger must beat the champion by this much


class OrchestrationParams(_Strict):
    # pool: each study runs as the `medops-study/study` deployment (work pool `gpu`, prefect.yaml)
    mode: Literal["local", "pool"] = "local"
    # fsspec URL every worker reaches (s3://bucket/medops, a shared file:// folder): trial
    # checkpoints and stage records, so a trial resumes and a study finishes on any host;
    # MEDOPS_CHECKPOINT_STORE overrides it. null: they stay on the host that made them.
    checkpoint_store: str | None = None
    # pool: times a study run that ended Crashed (its process died with its host or worker) is
    # submitted again; its trials resume from their checkpoints
    resubmit_crashed: int = Field(1, ge=0)


class QuantizeParams(_Strict):
    enabled: bool = True
    calibration_size: int = Field(256, ge=1)  # training images for static int8 activation ranges
    # an int8 variant is registered only within these validation drops of fp32 and when it is
    # faster than the fp32 graph under ONNX Runtime on the machine that measured it
    max_auc_drop: float = Field(0.005, ge=0)
    max_acc_drop: float = Field(0.01, ge=0)
    seconds: float = Field(1.0, gt=0)  # timing budget per variant and batch size
    qat_epochs: int = Field(1, ge=0)  # quantization-aware training from the trained weights; 0 = none
    # needed: only when static int8 is faster than fp32 ONNX Runtime but misses the accuracy rule
    qat_when: Literal["needed", "always"] = "needed"
    # contenders: accuracy measured for fp32 and the int8 variants faster than fp32 ONNX Runtime
    # (no other can be registered); all: every variant
    evaluate: Literal["contenders", "all"] = "contenders"
    qat_lr: float = Field(1e-4, gt=0)


class ExplainParams(_Strict):
    per_class: int = Field(2, ge=1)  # correct and wrong Grad-CAM examples per class


class ReportParams(_Strict):
    seeds: int = Field(3, ge=1)  # the best trial's recipe trained with this many seeds (the first is the study's)
    # seed runs side by side in child processes: auto on a CPU one per torch thread (at most one
    # per run, sharing the threads), on a GPU one after another; n: n at a time
    processes: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"


class EnsembleParams(_Strict):
    """The registered model's form, chosen on validation among the study's model alone and the
    average of the seed runs, each with and without horizontal-flip test-time augmentation."""

    seeds: bool = True  # consider the ensemble of the report.seeds runs
    flip_tta: bool = True  # consider flip TTA (only for recipes that trained with hflip)
    min_gain: float = Field(0.002, ge=0)  # a richer form must beat the simpler by more than this (monitor)


class ExperimentParams(_Strict):
    """What to train for one dataset: architectures, recipe changes, study budget."""

    # null: train.arch when it fits the data, else the default model for its dimensionality
    archs: list[str] | None = Field(None, min_length=1)
    train: dict = Field(default_factory=dict)  # overrides of the train section (dotted or nested)
    n_trials: int | None = Field(None, ge=1)  # overrides tune.n_trials


class Params(_Strict):
    # Sections later stages own are kept as plain dicts until their modules type them.
    model_config = ConfigDict(extra="allow")

    profile: str | None = None  # params-<profile>.yaml merged over this file (load_params)
    data: DataParams = Field(default_factory=DataParams)
    validation: ValidationParams = Field(default_factory=ValidationParams)
    eda: EdaParams = Field(default_factory=EdaParams)
    train: TrainParams = Field(default_factory=TrainParams)
    # Which architectures to train per dataset (keys must be in data.datasets).
    experiments: dict[str, ExperimentParams] = Field(default_factory=dict)
    tune: TuneParams = Field(default_factory=TuneParams)
    mlflow: MlflowParams = Field(default_factory=MlflowParams)
    promotion: PromotionParams = Field(default_factory=PromotionParams)
    orchestration: OrchestrationParams = Field(default_factory=OrchestrationParams)
    quantize: QuantizeParams = Field(default_factory=QuantizeParams)
    explain: ExplainParams = Field(default_factory=ExplainParams)
    report: ReportParams = Field(default_factory=ReportParams)
    ensemble: EnsembleParams = Field(default_factory=EnsembleParams)

    def recipe(self, flag: str, arch: str) -> TrainParams:
        """The train section with the dataset's overrides and the architecture applied."""
        overrides = flatten_dotted(self.experiments[flag].train)
        data = with_dotted(self.train.model_dump(), overrides)
        data["arch"] = arch
        keep_sides(data, flag, self.dataset(flag).size, set(overrides))
        return validate_section(TrainParams, data, f"experiments.{flag}.train")

    def archs(self, flag: str) -> list[str]:
        """The architectures trained for a dataset: its experiments entry, or the default."""
        listed = self.experiments[flag].archs
        if listed:
            return listed
        from medops.data.info import resolve
        from medops.training.models.catalog import ARCHITECTURES, DEFAULT_ARCH

        is_3d = resolve(flag, self.data.datasets[flag].size).is_3d
        chosen = self.train.arch  # an unknown name is refused by check_experiments
        if chosen in ARCHITECTURES and ARCHITECTURES[chosen].is_3d != is_3d:
            chosen = DEFAULT_ARCH[is_3d]
        return [chosen]

    def study_budget(self, flag: str) -> TuneParams:
        n = self.experiments[flag].n_trials
        return self.tune if n is None else self.tune.model_copy(update={"n_trials": n})

    def dataset(self, flag: str) -> DatasetParams:
        try:
            return self.data.datasets[flag]
        except KeyError:
            known = ", ".join(sorted(self.data.datasets)) or "(none)"
            raise ConfigError(
                f"dataset {flag!r} is not listed under data.datasets in params.yaml; listed: {known}"
            ) from None


def load_params(path: Path | str = DEFAULT_PARAMS) -> Params:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: parameters file not found (run from the project root)")
    raw, source = _with_profile(path, _read_mapping(path))
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None
    from medops.data.info import resolve  # local import: info pulls in medmnist

    for flag, ds in params.data.datasets.items():
        resolve(flag, ds.size)  # unknown flags and sizes fail here, before any work
    check_experiments(params)
    return params


def _read_mapping(path: Path) -> dict:
    """A YAML file's top-level mapping, or an error naming the file."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


# What a profile may change: the sections only the train stage reads (dvc.yaml). The data
# sections stay in params.yaml, so data stages never depend on which profile runs.
PROFILE_SECTIONS = ("train", "experiments", "tune", "mlflow", "promotion", "orchestration", "quantize", "explain",
                    "report", "ensemble")


def _with_profile(path: Path, raw: dict) -> tuple[dict, str]:
    """params.yaml with params-<profile>.yaml (next to it) merged over it when `profile` names one:
    nested keys merge, other values and lists replace, and a dataset's `experiments` entry in the
    profile replaces params.yaml's whole (a CPU recipe's epochs must not leak into a GPU one).
    Entries for datasets params.yaml does not train wait in the profile until it does.
    Returns the merged mapping and how to name it in errors."""
    name = raw.get("profile")
    if name is None:
        return raw, str(path)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ConfigError(f"{path}: profile: {name!r} is not a profile name (letters, digits, '-' and '_')")
    overlay_path = path.parent / f"params-{name}.yaml"
    if not overlay_path.exists():
        raise ConfigError(f"{path}: profile {name!r} needs {overlay_path}, which does not exist")
    overlay = _read_mapping(overlay_path)
    if other := sorted(set(overlay) - set(PROFILE_SECTIONS)):
        raise ConfigError(f"{overlay_path}: {', '.join(other)}: a profile sets only {', '.join(PROFILE_SECTIONS)} "
                          "(data sections and the profile itself stay in params.yaml)")
    experiments, recipes = raw.get("experiments") or {}, overlay.pop("experiments", None) or {}
    if not isinstance(experiments, dict) or not isinstance(recipes, dict):
        bad = path if not isinstance(experiments, dict) else overlay_path
        raise ConfigError(f"{bad}: experiments: expected a mapping of dataset flags")
    experiments = dict(experiments)
    for flag, entry in recipes.items():
        if flag in experiments:
            experiments[flag] = entry
    merged = _merged(raw, overlay)
    if experiments:
        merged["experiments"] = experiments
    return merged, f"{path} with {overlay_path}"


def _merged(base: dict, overlay: dict) -> dict:
    out = dict(base)
    for key, value in overlay.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def check_experiments(params: Params) -> None:
    """Architectures must exist and fit each dataset; search keys must be train keys."""
    from medops.data.info import TASK_TYPES, resolve
    from medops.training.models.catalog import check_fits

    for flag, experiment in params.experiments.items():
        if flag not in params.data.datasets:
            raise ConfigError(
                f"experiments.{flag}: not a dataset of data.datasets ({', '.join(params.data.datasets) or 'none'})"
            )
        spec = resolve(flag, params.data.datasets[flag].size)
        for arch in params.archs(flag):
            try:
                check_fits(arch, spec.is_3d)
            except ConfigError as exc:
                raise ConfigError(f"experiments.{flag}: {exc}") from None
            params.recipe(flag, arch)  # overrides must be valid train settings
    valid = train_keys()
    spaces = {"space": params.tune.space, **{f"arch_space.{a}": s for a, s in params.tune.arch_space.items()},
              **{f"task_space.{t}": s for t, s in params.tune.task_space.items()}}
    for task in params.tune.task_space:
        if task not in TASK_TYPES:
            raise ConfigError(f"tune.task_space: {task!r} is not a medmnist task type; one of: {', '.join(TASK_TYPES)}")
    for where, space in spaces.items():
        for key, dim in space.items():
            if key not in valid:
                raise ConfigError(f"tune.{where}: {key!r} is not a train key; searchable keys: {', '.join(valid)}")
            dim.check(key)


def set_dotted(data: dict, key: str, value) -> None:
    """data["augment"]["rotation"] = value for key "augment.rotation"."""
    *parents, leaf = key.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[leaf] = value


def with_dotted(data: dict, values: dict) -> dict:
    """data with every dotted key of values set: the one path by which `--set`, per-dataset
    recipes and trial values reach nested train settings."""
    for key, value in values.items():
        set_dotted(data, key, value)
    return data


def parse_settings(items: list[str]) -> dict:
    """`key=value` strings (`--set lr=3e-4 --set train.augment.enabled=false`) as dotted train
    keys with YAML values."""
    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        values[key.removeprefix("train.")] = yaml.safe_load(raw)
    return values


# What loses left from right: flips (3D: hflip flips every axis) are mirror images, and a crop
# turned by 90 or 180 degrees no longer shows which side is medial, the cue that tells them apart
SIDE_LOSING = {"augment.hflip": 0.0, "augment.vflip": 0.0, "augment.rot90": False}


def keep_sides(train: dict, flag: str, size: int, explicit: set[str]) -> None:
    """No side-losing augmentation for a set whose classes name a body side (DatasetSpec.sided):
    a flipped left kidney is a right kidney. The shared `train` section's flips and 90-degree
    turns are turned off for it, and with them flip test-time augmentation; what is set for this
    dataset itself is kept."""
    from medops.data.info import resolve

    if resolve(flag, size).sided:
        for key, off in SIDE_LOSING.items():
            if key not in explicit:
                set_dotted(train, key, off)


def flatten_dotted(data: dict, prefix: str = "") -> dict:
    """{"augment": {"rotation": 15}} as {"augment.rotation": 15}: the inverse of with_dotted."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def train_keys() -> list[str]:
    """Dotted names of every train setting (augment.rotation, transfer.finetune, ...)."""
    keys = []
    for name, field in TrainParams.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys += [f"{name}.{inner}" for inner in sub.model_fields]
        else:
            keys.append(name)
    return keys


def validate_section(model: type[BaseModel], data: dict, name: str):
    """Validate one section (e.g. after command-line overrides) with params-style messages."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc).replace("\n  ", f"\n  {name}.")) from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        lines.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
    return "invalid parameters:\n  " + "\n  ".join(lines)
