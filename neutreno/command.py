"""What every `neutreno` command shares: one-line user errors with exit status 2.

A command raises `CommandError` for a mistake the user can fix (a wrong name, a missing file, a
folder that would be overwritten); `run` prints it as one line on stderr, naming the fix, and
returns 2. `ArgumentParser` reports argparse's own errors the same way instead of printing the
usage block.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

USAGE_ERROR = 2


class CommandError(Exception):
    """A user mistake; the message says what is wrong and how to fix it, on one line."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with errors raised as one-line `CommandError`s pointing at --help."""

    def error(self, message: str) -> NoReturn:
        raise CommandError(f"{message} (see {self.prog} --help)")


def run(prog: str, main: Callable[[list[str]], int | None], argv: list[str]) -> int:
    """`main(argv)`'s exit status; a CommandError becomes '<prog>: <message>' and status 2."""
    try:
        return int(main(argv) or 0)
    except CommandError as exc:
        print(f"{prog}: {' '.join(str(exc).split())}", file=sys.stderr)
        return USAGE_ERROR
