"""The layers run one way: model.py -> serving -> backends -> shared, and tools stays outside.

Every import statement of the runtime code is read with `ast` (those inside functions too), so
an arrow that runs back fails here, whoever adds it:

- only `serving/` and the `model.py` files import `triton_python_backend_utils`;
- `backends/` imports neither `serving` nor pb_utils; `shared/` imports neither `backends`
  nor `serving`; none of the runtime layers imports `tools` (the tooling) or `tests`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PB_UTILS = "triton_python_backend_utils"

#: What each layer must not import (top-level module names).
FORBIDDEN = {
    "model_repository": {"tools", "tests"},
    "serving": {"tools", "tests"},
    "backends": {"serving", "tools", "tests", PB_UTILS},
    "shared": {"backends", "serving", "tools", "tests", PB_UTILS},
    "tools": {PB_UTILS},
    # The OpenAI door reaches the models over gRPC only: no model code, no tooling.
    "openai_api": {"serving", "backends", "model_repository", "tools", "tests", PB_UTILS},
    # The client library installs beside tritonclient alone: nothing of the server side.
    "multimodal_client": {
        "serving",
        "backends",
        "shared",
        "model_repository",
        "openai_api",
        "tools",
        "tests",
        PB_UTILS,
    },
}


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, top-level module) of every absolute import in the file."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def back_arrows(root: Path) -> list[str]:
    """Every import in `root`'s runtime code that runs against the layers."""
    found = []
    for layer, forbidden in FORBIDDEN.items():
        for path in sorted((root / layer).rglob("*.py")):
            for line, module in imported_modules(path):
                if module in forbidden:
                    found.append(f"{path.relative_to(root)}:{line} imports {module}")
    return found


def test_no_import_runs_back_against_the_layers() -> None:
    assert back_arrows(ROOT) == []


@pytest.mark.parametrize(
    ("layer", "statement"),
    [
        ("shared", "from backends.chat.engine import VlmEngine"),
        ("shared", "import serving.tensors"),
        ("backends", "import triton_python_backend_utils as pb_utils"),
        ("backends", "from serving.errors import ErrorCounter"),
        ("serving", "from tools.local_server import free_port"),
        ("tools", "import triton_python_backend_utils"),
    ],
)
def test_an_arrow_that_runs_back_is_found(tmp_path: Path, layer: str, statement: str) -> None:
    """The check itself: a copy of the layers with one bad import, inside a function."""
    for name in FORBIDDEN:
        (tmp_path / name).mkdir()
    (tmp_path / layer / "module.py").write_text(f"def late():\n    {statement}\n")
    assert back_arrows(tmp_path) == [
        f"{layer}/module.py:2 imports {statement.split()[1].split('.')[0]}"
    ]
