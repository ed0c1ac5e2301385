"""Lifecycle: MLflow tracking, the model registry, model cards, the summary report."""
