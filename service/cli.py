"""`neutreno serve --host H --port P`: NEUTRENO_WORKERS front ends and one engine process.

Settings are validated here, once, with messages naming the variable; `service.supervisor`
then runs the process tree. On SIGTERM/SIGINT every front end first reports not-ready (so a load
balancer stops sending), stops accepting connections and waits up to NEUTRENO_DRAIN_TIMEOUT_S for
in-flight requests; then the engine finishes every accepted batch and sequence before exit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from service.engine.runtime import RuntimeSetupError, choose_providers
from service.logs import configure_logging
from service.settings import Overrides, Settings
from service.supervisor import Supervisor


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="neutreno serve", description=__doc__.splitlines()[0])
    p.add_argument("--host", help="bind address (default NEUTRENO_HOST or 0.0.0.0)")
    p.add_argument("--port", type=int, help="port (default NEUTRENO_PORT or 8000)")
    p.add_argument(
        "--model-repository", type=Path, help="bundle folder (default NEUTRENO_MODEL_REPOSITORY)"
    )
    return p.parse_args(argv)


def overrides_of(args: argparse.Namespace) -> Overrides:
    """The command line's settings (each process reads the rest from the environment)."""
    overrides: Overrides = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.model_repository is not None:
        overrides["model_repository"] = args.model_repository
    return overrides


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = Settings(**overrides_of(args))
    except ValidationError as exc:
        for err in exc.errors():
            field = ".".join(map(str, err["loc"]))
            print(
                f"neutreno serve: invalid setting NEUTRENO_{field.upper()}: {err['msg']}",
                file=sys.stderr,
            )
        return 2
    try:
        choose_providers(settings.device)
    except RuntimeSetupError as exc:
        print(f"neutreno serve: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    return Supervisor(settings, overrides_of(args)).run()
