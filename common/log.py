"""The project's logger: console for every process, a log file for rank 0."""

from __future__ import annotations

import logging
import os
import sys

LOGGER_NAME = "cvrkd"


def setup_logger(log_file: str | None, is_main: bool = True) -> logging.Logger:
    """Console + file logger; processes other than rank 0 only log warnings."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if log_file and is_main:
        os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    return logger


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)
