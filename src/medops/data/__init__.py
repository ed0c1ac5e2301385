"""Data stages: download, validate, preprocess, EDA, and a synthetic-data generator."""
