"""Prefect tasks: thin wrappers over medops functions."""
