"""Regenerate `inference_pb2.py` / `inference_pb2.pyi` from `inference.proto` (committed, so
serving needs no protoc): `python -m service.frontend.grpc.generate` from the repository root,
with grpcio-tools from the dev extra. The modules are generated, not edited by hand."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PROTO = Path(__file__).resolve().with_name("inference.proto").relative_to(ROOT)


def main() -> int:
    from grpc_tools import protoc  # dev extra only

    args = ["protoc", f"-I{ROOT}", f"--python_out={ROOT}", f"--pyi_out={ROOT}", str(PROTO)]
    return int(protoc.main(args))


if __name__ == "__main__":
    sys.exit(main())
