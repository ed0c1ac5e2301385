"""What a training flow run shows in the Prefect UI beside its task runs (Artifacts tab,
`prefect artifact ls`): a table per study, the promotion decision per dataset and the model card.
Keys stay the same from run to run, so each artifact's history is the dataset's history."""

from __future__ import annotations

from pathlib import Path

from prefect.artifacts import create_markdown_artifact, create_table_artifact


def key(*parts: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return "-".join(parts).replace("_", "-").lower()


def _int8(summary: dict) -> str:
    quant = summary.get("quantization") or {}
    if "error" in quant:
        return quant["error"]
    if quant.get("best_int8"):
        return f"{quant['best_int8']} (v{summary.get('int8_version', '?')})"
    return f"none registered: {quant.get('reason') or 'see the model card'}"


def study_row(arch: str, summary: dict) -> dict:
    form = summary.get("form") or {}
    return {
        "architecture": arch, "registered version": summary.get("registered_version"),
        "form": form.get("name", "single model"), "best trial": summary.get("best_trial"),
        "val AUC": round(summary["val"]["auc"], 4), "val ACC": round(summary["val"]["acc"], 4),
        "test AUC": round(summary["test"]["auc"], 4), "test ACC": round(summary["test"]["acc"], 4),
        "int8": _int8(summary),
    }


def publish(flag: str, summaries: dict[str, dict], promotion: dict | None, card: str | None) -> None:
    for arch, summary in summaries.items():
        create_table_artifact(table=[study_row(arch, summary)], key=key("study", flag, arch),
                              description=f"{flag} / {arch}: the registered model on validation and test")
    if promotion is not None:
        moved = "moved to" if promotion["moved"] else "stays at"
        champion = f"v{promotion['champion']}" if promotion.get("champion") else "no version"
        create_markdown_artifact(
            markdown=f"# Promotion: {promotion['name']}\n\n`champion` {moved} **{champion}** "
                     f"(challenger: v{promotion.get('challenger') or '-'}, before: "
                     f"v{promotion.get('previous_champion') or '-'}).\n\n{promotion['reason']}\n",
            key=key("promotion", flag), description=f"{flag}: the promotion gate's decision")
    if card:
        create_markdown_artifact(markdown=Path(card).read_text(), key=key("model-card", flag),
                                 description=f"{flag}: model card (reports/{flag}/model_card.md)")
