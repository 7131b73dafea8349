"""`neutreno <command> ...`: one console script; each command's arguments live with its package.

Imports are lazy so that `neutreno serve` never imports torch.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys

from neutreno.command import run

COMMANDS = {
    "train": ("training.train", "train NeuTRENO / softmax models (single process or torchrun)"),
    "export": ("export.cli", "export a checkpoint to an ONNX model bundle"),
    "serve": ("service.cli", "serve the model repository over HTTP"),
    "bench": ("bench.cli", "run the load and speed benchmarks"),
}


def dispatch(prog: str, table: dict[str, tuple[str, str]], argv: list[str]) -> int:
    """Run `table[argv[0]]`'s module `main(argv[1:])`; usage on no or an unknown command.

    table maps a command name to (module path, one-line help).
    """
    lines = [f"usage: {prog} [--version] <command> [options]", "", "commands:"]
    usage = "\n".join(lines + [f"  {name:<10} {help_}" for name, (_, help_) in table.items()])
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"{prog} {importlib.metadata.version('neutreno-serve')}")
        return 0
    if argv[0] not in table:
        print(
            f"{prog}: unknown command {argv[0]!r}; choose from {', '.join(table)}", file=sys.stderr
        )
        return 2
    module = importlib.import_module(table[argv[0]][0])
    return run(f"{prog} {argv[0]}", module.main, argv[1:])


def main(argv: list[str] | None = None) -> int:
    return dispatch("neutreno", COMMANDS, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
