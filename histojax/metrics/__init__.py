"""Evaluation metrics computed on host from accumulated counts."""
