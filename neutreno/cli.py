"""`neutreno <command> ...`: one console script; each command's arguments live with its package.

Imports are lazy so that `neutreno serve` never imports torch.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("models.train", "train NeuTRENO / softmax models (single process or torchrun)"),
    "export": ("export.cli", "export a checkpoint to an ONNX model bundle"),
    "serve": ("service.cli", "serve the model repository over HTTP"),
    "bench": ("bench.cli", "run the load and speed benchmarks"),
}


def usage() -> str:
    lines = ["usage: neutreno <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"neutreno: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
