"""Generate the Python gRPC code for ``protos/`` into ``src/trajstore/`` (never edit it by hand).

Usage: ``python scripts/gen_protos.py [OUT_DIR]`` (default: ``src``). The
files land at ``OUT_DIR/trajstore/v1/`` and import as ``trajstore.v1``. A
test regenerates them into a temporary folder and fails if the checked-in
copies differ.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"


def generate(out: Path) -> list[Path]:
    """Run protoc on every ``.proto`` under ``protos/``; return the files written."""
    sources = sorted(PROTOS.rglob("*.proto"))
    include = str(resources.files("grpc_tools") / "_proto")
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(s) for s in sources),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    package = out / "trajstore" / "v1"
    init = package / "__init__.py"
    init.write_text('"""Generated from protos/ by scripts/gen_protos.py."""\n')
    return sorted(package.glob("*.py*"))


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "src"
    for path in generate(target):
        print(path)
