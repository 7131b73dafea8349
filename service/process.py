"""Processes named by role, as nginx and PostgreSQL do: `ps` shows `neutreno: engine 0 (cpu)`,
`neutreno: front end 1`, `neutreno: supervisor` (setproctitle rewrites /proc/PID/cmdline)."""

from __future__ import annotations

import setproctitle

PREFIX = "neutreno: "


def set_title(role: str) -> None:
    """Name this process `neutreno: <role>`."""
    setproctitle.setproctitle(PREFIX + role)
