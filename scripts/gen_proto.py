"""Regenerate the Python modules for proto/*.proto into the `cluster.common` package.

Usage: python scripts/gen_proto.py [--out DIR]

The generated gRPC module imports its message module as a top-level name; we rewrite that
into a relative import so the modules live inside `cluster.common` (a top-level `proto` package
would clash with proto-plus). tests/test_proto.py regenerates into a temporary directory
and fails when the checked-in modules are stale.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


def generate(out: pathlib.Path) -> list[pathlib.Path]:
    """Generate *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every proto file into `out`."""
    from grpc_tools import protoc

    protos = sorted(PROTO_DIR.glob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = []
    for proto in protos:
        stem = proto.stem
        grpc_file = out / f"{stem}_pb2_grpc.py"
        text = grpc_file.read_text()
        text = re.sub(rf"^import {stem}_pb2 as", f"from . import {stem}_pb2 as", text, flags=re.M)
        grpc_file.write_text(text)
        written += [out / f"{stem}_pb2.py", out / f"{stem}_pb2.pyi", grpc_file]
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(ROOT / "cluster" / "common"))
    ns = parser.parse_args()
    for path in generate(pathlib.Path(ns.out)):
        print(path, file=sys.stderr)


if __name__ == "__main__":
    main()
