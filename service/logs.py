"""Logging set-up shared by every process of the service (supervisor, front ends, engine)."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Send the service's loggers to stderr at `level` (uvicorn's own loggers are its own)."""
    logger = logging.getLogger("neutreno")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(handler)
        logger.propagate = False
