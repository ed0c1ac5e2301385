"""`medops` command line: every pipeline stage runnable and debuggable without DVC."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from medops.errors import MedopsError

app = typer.Typer(help="MedMNIST MLOps pipeline.", no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Data stages: download, validate, preprocess, eda, synth.", no_args_is_help=True)
app.add_typer(data_app, name="data")

err = Console(stderr=True)
PARAMS = typer.Option(Path("params.yaml"), "--params", "-p", help="Parameters file.")


def _setup_logging() -> None:
    # Our own progress at INFO; libraries (GX, DVC, MLflow) only when they warn.
    logging.basicConfig(
        level=logging.WARNING, format="%(message)s", datefmt="[%X]",
        handlers=[RichHandler(console=err, show_path=False, rich_tracebacks=False)],
    )
    logging.getLogger("medops").setLevel(logging.INFO)
    logging.getLogger("great_expectations").setLevel(logging.WARNING)


def friendly(fn):
    """Print MedopsError as one readable message and exit 1, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _setup_logging()
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


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
