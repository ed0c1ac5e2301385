"""validate stage: a Great Expectations suite over a per-split summary of the arrays.

The arrays are summarised into one row per split (shapes, dtype, label range, blank and
leaked images, ...); the suite states what INFO says each value must be. A failed
expectation fails the stage with a message naming the expectation and the split.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from medops import paths
from medops.config import DatasetParams, ValidationParams
from medops.data.info import MULTI_LABEL, SPLITS, DatasetSpec, resolve
from medops.data.npz import load_arrays
from medops.errors import ValidationFailed
from medops.files import atomic_dir, write_json, write_text

log = logging.getLogger(__name__)


def _image_hashes(flat: np.ndarray) -> list[str]:
    return [hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest() for row in flat]


def summarize(arrays: dict[str, np.ndarray], spec: DatasetSpec, official: bool) -> pd.DataFrame:
    """One row per split with everything the expectations look at."""
    rows, seen = [], set()
    for split in SPLITS:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        n = images.shape[0] if images.ndim else 0
        flat = images.reshape(n, -1) if n else images.reshape(0, 0)
        is_float = np.issubdtype(images.dtype, np.floating)
        finite = np.isfinite(flat) if is_float else None
        blank = (flat.max(axis=1) == flat.min(axis=1)) if flat.size else np.zeros(0, bool)
        hashes = _image_hashes(flat)
        leaked = sum(h in seen for h in hashes)
        seen.update(hashes)

        label_integer = bool(np.issubdtype(labels.dtype, np.integer))
        width = labels.shape[1] if labels.ndim == 2 else -1
        missing = _classes_missing(labels, spec) if label_integer and width == spec.label_width else -1
        rows.append(
            {
                "split": split,
                "n_images": n,
                "expected_n_images": spec.n_samples[split] if official else n,
                "image_shape": str(tuple(images.shape[1:])),
                "dtype": str(images.dtype),
                "n_nonfinite": int((~finite).sum()) if is_float else 0,
                "n_labels": labels.shape[0] if labels.ndim else 0,
                "label_width": width,
                "label_dtype_integer": label_integer,
                "label_min": float(np.nanmin(labels)) if labels.size else 0.0,
                "label_max": float(np.nanmax(labels)) if labels.size else 0.0,
                "classes_missing": missing,
                "blank_fraction": float(blank.mean()) if n else 0.0,
                "duplicates_within": n - len(set(hashes)),
                # val/test images already seen in an earlier split (train, then val)
                "leak_fraction": leaked / n if n and split != "train" else 0.0,
            }
        )
    return pd.DataFrame(rows)


def _classes_missing(labels: np.ndarray, spec: DatasetSpec) -> int:
    if spec.task == MULTI_LABEL:
        return int((labels.sum(axis=0) == 0).sum())
    values = labels.ravel()
    values = values[(values >= 0) & (values < spec.n_classes)]
    return int((np.bincount(values.astype(np.int64), minlength=spec.n_classes) == 0).sum())


def build_checks(spec: DatasetSpec, official: bool, limits: ValidationParams) -> list:
    """The expectations, each carrying in its meta the sentence a person reads on failure."""
    import great_expectations as gx

    from great_expectations.expectations.row_conditions import Column

    E = gx.expectations

    def check(kind, problem: str, **kwargs):
        return kind(meta={"problem": problem}, **kwargs)

    label_max = 1 if spec.task == MULTI_LABEL else spec.n_classes - 1
    return [
        check(E.ExpectColumnPairValuesToBeEqual, "number of images is not the split size INFO lists",
              column_A="n_images", column_B="expected_n_images")
        if official else
        check(E.ExpectColumnValuesToBeBetween, "a split has no images", column="n_images", min_value=1),
        check(E.ExpectColumnValuesToBeInSet,
              f"image shape is not {spec.image_shape} ({spec.size}px, {spec.n_channels} channel(s))",
              column="image_shape", value_set=[str(spec.image_shape)]),
        check(E.ExpectColumnValuesToBeInSet, "image dtype is not uint8", column="dtype", value_set=["uint8"]),
        check(E.ExpectColumnValuesToBeBetween, "images contain NaN or inf", column="n_nonfinite", max_value=0),
        check(E.ExpectColumnPairValuesToBeEqual, "number of labels differs from number of images",
              column_A="n_labels", column_B="n_images"),
        check(E.ExpectColumnValuesToBeInSet, f"labels are not shaped (N, {spec.label_width}) for task '{spec.task}'",
              column="label_width", value_set=[spec.label_width]),
        check(E.ExpectColumnValuesToBeInSet, "labels are not integers",
              column="label_dtype_integer", value_set=[True]),
        check(E.ExpectColumnValuesToBeBetween, f"labels below 0 (valid: 0..{label_max})",
              column="label_min", min_value=0),
        check(E.ExpectColumnValuesToBeBetween, f"labels above {label_max} (valid: 0..{label_max})",
              column="label_max", max_value=label_max),
        check(E.ExpectColumnValuesToBeBetween, "some classes have no training example",
              column="classes_missing", min_value=0, max_value=0,
              row_condition=Column("split") == "train"),
        check(E.ExpectColumnValuesToBeBetween,
              f"more than {limits.max_blank_fraction:.1%} of images are blank (constant)",
              column="blank_fraction", max_value=limits.max_blank_fraction),
        check(E.ExpectColumnValuesToBeBetween,
              f"more than {limits.max_leak_fraction:.1%} of images repeat an image of an earlier "
              "split (train/val/test leakage)",
              column="leak_fraction", max_value=limits.max_leak_fraction),
    ]


def run_suite(summary: pd.DataFrame, checks: list, name: str, docs: Path | None = None) -> list[dict]:
    """Run the checks through a GX checkpoint; one result row per check with the splits that
    failed. With `docs`, GX also renders its Data Docs site (HTML) into that folder."""
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = gx.data_context.types.base.ProgressBarsConfig(globally=False)
    actions = []
    if docs is not None:
        context.add_data_docs_site(site_name="medops", site_config={
            "class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs)}})
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="data-docs", site_names=["medops"]))
    asset = context.data_sources.add_pandas("medops").add_dataframe_asset(name)
    batch = asset.add_batch_definition_whole_dataframe("splits")
    suite = context.suites.add(gx.ExpectationSuite(name=f"{name}-suite"))
    for expectation in checks:
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{name}-validation", data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name=f"{name}-checkpoint", validation_definitions=[definition], actions=actions, result_format="COMPLETE"))
    run = checkpoint.run(batch_parameters={"dataframe": summary})
    result = next(iter(run.run_results.values()))

    outcomes = []
    for res in result.results:
        config = res.expectation_config
        bad_rows = res.result.get("unexpected_index_list") or []
        column = config.kwargs.get("column") or config.kwargs.get("column_A")
        outcomes.append(
            {
                "expectation": config.type,
                "column": column,
                "problem": config.meta["problem"],
                "success": bool(res.success),
                "failed_splits": [summary.loc[i, "split"] for i in bad_rows if i in summary.index],
                "observed": {s: _plain(summary.set_index("split").loc[s, column]) for s in SPLITS},
                "exception": res.exception_info.get("exception_message")
                if res.exception_info.get("raised_exception") else None,
            }
        )
    return outcomes


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def validate(flag: str, ds: DatasetParams, limits: ValidationParams, raw: Path | None = None) -> Path:
    """Validate data/raw/<flag>.npz; write the report; raise ValidationFailed on any failure."""
    spec = resolve(flag, ds.size)
    raw = Path(raw or paths.raw_file(flag))
    official = ds.source == "official"
    summary = summarize(load_arrays(raw), spec, official)
    with tempfile.TemporaryDirectory(prefix="medops-data-docs-") as docs:
        outcomes = run_suite(summary, build_checks(spec, official, limits), name=flag, docs=Path(docs))
        failed = [o for o in outcomes if not o["success"]]
        target = _write_report(flag, raw, spec, ds, summary, outcomes, failed, Path(docs))
    if failed:
        lines = [
            f"- {o['problem']} [{', '.join(o['failed_splits']) or 'all splits'}] "
            f"({o['expectation']} on {o['column']}; observed {o['observed']})"
            for o in failed
        ]
        raise ValidationFailed(
            f"{raw}: {len(failed)} of {len(outcomes)} expectations failed:\n"
            + "\n".join(lines)
            + f"\nFull report: {target}/report.md. The last good outputs were kept."
        )
    shutil.rmtree(paths.failed_validation_dir(flag), ignore_errors=True)
    log.info("%s: all %d expectations passed", raw, len(outcomes))
    return target


def _write_report(flag: str, raw: Path, spec, ds: DatasetParams, summary: pd.DataFrame, outcomes: list[dict],
                  failed: list[dict], docs: Path) -> Path:
    """result.json, summary.csv, report.md and GX's Data Docs (data_docs/index.html), passed or
    failed alike, into the validation folder (or the failed-validation one: the last good report stays)."""
    target = paths.failed_validation_dir(flag) if failed else paths.validation_dir(flag)
    report = {
        "file": str(raw), "flag": flag, "size": spec.size, "task": spec.task, "source": ds.source,
        "success": not failed, "expectations": outcomes, "summary": summary.to_dict(orient="records"),
    }
    with atomic_dir(target) as out:
        write_json(out / "result.json", report)
        summary.to_csv(out / "summary.csv", index=False)
        write_text(out / "report.md", render_markdown(report))
        if (docs / "index.html").exists():
            shutil.copytree(docs, out / "data_docs")
    return target


def render_markdown(report: dict) -> str:
    status = "PASSED" if report["success"] else "FAILED"
    lines = [
        f"# Validation of `{report['file']}`: {status}",
        "",
        f"Dataset `{report['flag']}` at {report['size']}px, task *{report['task']}*, "
        f"source {report['source']}. Suite run by Great Expectations; its Data Docs: "
        "[data_docs/index.html](data_docs/index.html).",
        "",
        "| result | expectation | column | failed splits | problem when failing |",
        "|---|---|---|---|---|",
    ]
    for o in report["expectations"]:
        mark = "pass" if o["success"] else "**FAIL**"
        lines.append(
            f"| {mark} | `{o['expectation']}` | `{o['column']}` | "
            f"{', '.join(o['failed_splits']) or '-'} | {o['problem']} |"
        )
    lines += ["", "## Per-split summary", "", pd.DataFrame(report["summary"]).to_markdown(index=False)]
    return "\n".join(lines) + "\n"
