"""Log set-up of `neutreno serve`: the `neutreno.*` loggers print to stderr at NEUTRENO_LOG_LEVEL.

uvicorn configures only its own loggers; without this, the service's start-up lines (what
serves, from where, on which device, and why anything is not loaded) went nowhere.
"""

from __future__ import annotations

import logging

LOGGER = "neutreno"
HANDLER = "neutreno-stderr"
FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Level and one stderr handler for the `neutreno` logger tree (idempotent)."""
    logger = logging.getLogger(LOGGER)
    logger.setLevel(level.upper())
    if any(h.get_name() == HANDLER for h in logger.handlers):
        return
    handler = logging.StreamHandler()
    handler.set_name(HANDLER)
    handler.setFormatter(logging.Formatter(FORMAT))
    logger.addHandler(handler)
