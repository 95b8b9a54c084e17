"""Shared code of the CVRKD-IQA scripts: metrics, checkpoints, training loop, scoring."""
