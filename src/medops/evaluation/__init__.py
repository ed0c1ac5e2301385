"""Evaluation: metrics and plots, Grad-CAM, the registered model's form."""
