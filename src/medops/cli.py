"""`medops` command line: every pipeline stage runnable and debuggable without DVC."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from medops.errors import MedopsError
from medops.exiting import freeze_heap_at_exit
from medops.logs import setup_logging

app = typer.Typer(help="MedMNIST MLOps pipeline.", no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Data stages: download, validate, preprocess, eda, synth.", no_args_is_help=True)
app.add_typer(data_app, name="data")
cluster_app = typer.Typer(help="A throwaway PostgreSQL + MLflow + Prefect setup with pool workers, on this host.",
                          no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")
CLUSTER_DIR = typer.Option(Path(".cluster"), "--dir", help="Where its databases, logs and pids live.")

# Wide lines when logging to a file or a DVC log, where there is no terminal to wrap for.
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
PARAMS = typer.Option(Path("params.yaml"), "--params", "-p", help="Parameters file.")


def _setup_logging() -> None:
    setup_logging(RichHandler(console=err, show_path=False, rich_tracebacks=False))


def friendly(fn):
    """Print MedopsError as one readable message and exit 1, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _setup_logging()
        freeze_heap_at_exit()  # a command is the process's last work
        try:
            return fn(*args, **kwargs)
        except MedopsError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            sys.exit(1)

    return wrapper


@data_app.command()
@friendly
def download(flag: str, params: Path = PARAMS) -> None:
    """Copy a verified MedMNIST file into data/raw/ (mirror first, then the official record)."""
    from medops.config import load_params
    from medops.data.download import download as run

    p = load_params(params)
    out = run(flag, p.dataset(flag), p.data.mirror_dir())
    err.print(f"{flag}: wrote {out}")


@data_app.command()
@friendly
def validate(flag: str, params: Path = PARAMS) -> None:
    """Run the Great Expectations suite on data/raw/<flag>.npz; fails on any failed expectation."""
    from medops.config import load_params
    from medops.data.validate import validate as run

    p = load_params(params)
    out = run(flag, p.dataset(flag), p.validation)
    err.print(f"{flag}: validation passed, report in {out}/report.md")


@data_app.command()
@friendly
def preprocess(flag: str, params: Path = PARAMS) -> None:
    """Write training-ready arrays, normalisation and class weights to data/processed/<flag>/."""
    from medops.config import load_params
    from medops.data.preprocess import preprocess as run

    p = load_params(params)
    out = run(flag, p.dataset(flag))
    err.print(f"{flag}: wrote {out}")


@data_app.command()
@friendly
def eda(flag: str, params: Path = PARAMS) -> None:
    """Write EDA plots (PNG) to reports/<flag>/eda/."""
    from medops.config import load_params
    from medops.data.eda import eda as run

    p = load_params(params)
    p.dataset(flag)
    out = run(flag, p.eda)
    err.print(f"{flag}: wrote plots to {out}")


@data_app.command()
@friendly
def synth(
    flag: str = typer.Option(..., help="Any medmnist.INFO flag."),
    size: int = typer.Option(28, help="Image size (28, 64, 128, 224; 3D: 28, 64)."),
    samples: int = typer.Option(64, min=1, help="Images per split."),
    out: Path = typer.Option(Path("data/synthetic"), help="Folder to write <flag>[_size].npz into."),
    seed: int = typer.Option(0),
) -> None:
    """Write a synthetic file in the exact MedMNIST npz layout (use it as a mirror, source: custom)."""
    from medops.data.synth import write_synthetic

    path = write_synthetic(flag, size, samples, out, seed)
    err.print(f"wrote {path}")


@app.command("train")
@friendly
def train_command(
    flag: str,
    arch: str = typer.Option(None, help="Architecture (default: train.arch in params.yaml)."),
    epochs: int = typer.Option(None, min=1, help="Override train.epochs."),
    seed: int = typer.Option(None, help="Override train.seed."),
    set_: list[str] = typer.Option([], "--set", help="Override any train key: --set lr=3e-4 --set augment.enabled=false"),
    out: Path = typer.Option(None, help="Put checkpoints and reports here instead of models/ and reports/."),
    params: Path = PARAMS,
) -> None:
    """Train one architecture on one dataset; writes a checkpoint, metrics JSON and PNG plots."""
    from medops import paths
    from medops.config import TrainParams, keep_sides, load_params, parse_settings, validate_section, with_dotted
    from medops.runs import train_and_evaluate

    p = load_params(params)
    settings = parse_settings(set_)
    section = with_dotted(p.train.model_dump(), settings)
    keep_sides(section, flag, p.dataset(flag).size, set(settings))
    for key, value in (("arch", arch), ("epochs", epochs), ("seed", seed)):
        if value is not None:
            section[key] = value
    cfg = validate_section(TrainParams, section, "train")
    models_dir = out or paths.model_dir(flag, cfg.arch)
    reports_dir = out or paths.run_reports_dir(flag, cfg.arch)
    _, summary = train_and_evaluate(paths.processed_dir(flag), cfg, models_dir, reports_dir)
    err.print(
        f"{flag}/{cfg.arch}: test AUC {summary['test']['auc']:.4f}, ACC {summary['test']['acc']:.4f} "
        f"(best epoch {summary['best_epoch']}); report in {reports_dir}/metrics.json"
    )


@app.command()
@friendly
def promote(
    flag: str,
    version: str = typer.Option(None, help="Make this version champion (default: run the promotion gate)."),
    params: Path = PARAMS,
) -> None:
    """Run the promotion gate for <flag>-classifier, or set champion to --version by hand."""
    from medops.lifecycle import model_registry as registry
    from medops.lifecycle import tracking
    from medops.config import load_params

    p = load_params(params)
    tracking.configure(p.mlflow)
    result = registry.set_champion(flag, version) if version else registry.promote(
        flag, p.promotion.metric, p.promotion.min_delta)
    err.print(f"{result.name}: champion v{result.champion} ({result.reason})")


@app.command()
@friendly
def rollback(flag: str, params: Path = PARAMS) -> None:
    """Give champion back to the version the current champion replaced."""
    from medops.lifecycle import model_registry as registry
    from medops.lifecycle import tracking
    from medops.config import load_params

    p = load_params(params)
    tracking.configure(p.mlflow)
    result = registry.rollback(flag)
    err.print(f"{result.name}: champion v{result.previous_champion} -> v{result.champion}")


MODEL = typer.Option(..., "--model", "-m", help="A model URI: models:/<flag>-classifier@champion, runs:/..., a path.")
KEY = typer.Option(None, "--key", help="Array to read from .npz files (default: images, test_images or the only one).")


def _load_classifier(uri: str, params: Path):
    """The registered pyfunc and the Classifier inside it (tracking store from params.yaml)."""
    import mlflow

    from medops.lifecycle import tracking
    from medops.config import load_params
    from medops.release.pyfunc import Classifier

    if params.exists():
        tracking.configure(load_params(params).mlflow)
    try:
        model = mlflow.pyfunc.load_model(uri)
    except Exception as exc:
        raise MedopsError(f"{uri}: cannot load the model ({str(exc).splitlines()[0]})") from None
    inner = model.unwrap_python_model() if hasattr(model, "unwrap_python_model") else None
    if not isinstance(inner, Classifier):
        raise MedopsError(f"{uri}: not a medops classifier (log it with medops.release.pyfunc.log_classifier)")
    return model, inner


@app.command()
@friendly
def predict(
    files: list[Path] = typer.Argument(..., help=".npz/.npy arrays in the MedMNIST layout or PNG/JPEG images."),
    model: str = MODEL,
    key: str = KEY,
    output: Path = typer.Option(None, "--output", "-o", help="Also write every prediction to this CSV."),
    rows: int = typer.Option(40, help="Rows shown in the table (all go to --output)."),
    params: Path = PARAMS,
) -> None:
    """Class probabilities and labels for images, from a registered model."""
    from rich.table import Table

    from medops.release.images import load_images
    from medops.files import atomic_path

    pyfunc, classifier = _load_classifier(model, params)
    images, names = load_images(files, classifier.shape, key)
    table = pyfunc.predict(images)
    table.insert(0, "image", names)
    view = Table(title=f"{model}: {len(table)} images")
    for column in table.columns:
        view.add_column(column, justify="right" if column.startswith("p_") else "left")
    for _, row in table.head(rows).iterrows():
        view.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row])
    Console().print(view)
    if len(table) > rows:
        err.print(f"... {len(table) - rows} more rows" + ("" if output else " (use --output to keep them all)"))
    if output:
        with atomic_path(output) as tmp:
            table.to_csv(tmp, index=False)
        err.print(f"wrote {output}")


@app.command()
@friendly
def explain(
    files: list[Path] = typer.Argument(..., help=".npz/.npy arrays in the MedMNIST layout or PNG/JPEG images."),
    model: str = MODEL,
    key: str = KEY,
    output: Path = typer.Option(Path("gradcam.png"), "--output", "-o", help="PNG to write."),
    limit: int = typer.Option(24, help="At most this many images in the grid."),
    params: Path = PARAMS,
) -> None:
    """Grad-CAM of the predicted class for each image, as one PNG grid."""
    from medops.evaluation.gradcam import predictions_grid
    from medops.release.images import load_images
    from medops.plotting import save

    _, classifier = _load_classifier(model, params)
    images, names = load_images(files, classifier.shape, key)
    fig = predictions_grid(classifier.module, images[:limit], names[:limit], classifier.class_names, classifier.task)
    err.print(f"wrote {save(fig, output)}")


@app.command()
@friendly
def report(params: Path = PARAMS) -> None:
    """Write reports/summary.md: every dataset x architecture against MedMNIST v2."""
    from medops.config import load_params
    from medops.lifecycle.report import write_summary

    out = write_summary(load_params(params))
    err.print(f"wrote {out}")


@cluster_app.command("up")
@friendly
def cluster_up(
    workers: int = typer.Option(2, "--workers", "-w", min=1, help="Pool workers (each runs one study at a time)."),
    threads: int = typer.Option(None, "--threads", help="torch threads per worker (default: torch's own)."),
    gpus: str = typer.Option(None, "--gpus", help="One worker per listed GPU, pinned with CUDA_VISIBLE_DEVICES: 0,1,2"),
    warm: bool = typer.Option(True, "--warm/--cold",
                              help="Start each study run in a process that has already imported its libraries."),
    folder: Path = CLUSTER_DIR,
) -> None:
    """Start PostgreSQL, an MLflow server, a Prefect server, the gpu pool and its workers."""
    from medops import cluster

    c = cluster.up(folder, workers=workers, threads=threads, gpus=gpus.split(",") if gpus else None, warm=warm)
    err.print(f"MLflow   {c.mlflow_url}\nPrefect  {c.prefect_url.removesuffix('/api')}\n"
              f"Optuna   {c.env['MEDOPS_OPTUNA_STORAGE']}\nworkers  {sum(n.startswith('worker-') for n in c.pids)} on pool gpu\n"
              f"then:    source {folder}/env && python -m flows.training --mode pool")


@cluster_app.command("down")
@friendly
def cluster_down(folder: Path = CLUSTER_DIR) -> None:
    """Stop exactly what `medops cluster up` started (by pid), PostgreSQL last."""
    from medops import cluster

    stopped = cluster.down(folder)
    err.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
