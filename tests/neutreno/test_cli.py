"""The `neutreno` console script: --version, and one-line errors for an unknown command."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

from neutreno.cli import main


def test_version_is_the_package_version(capsys) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"neutreno {importlib.metadata.version('neutreno-serve')}\n"


def test_unknown_command_is_one_line_listing_the_commands(capsys) -> None:
    assert main(["trian"]) == 2
    err = capsys.readouterr().err
    assert err == "neutreno: unknown command 'trian'; choose from train, export, serve, bench\n"


def test_console_script_exit_status_is_2_on_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "neutreno.cli", "export", "ckpt", "--out", "x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "<repository>/<name>/<version>" in done.stderr
