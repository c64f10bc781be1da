"""Functions read as a short sequence of named steps: none in the layers below the front ends
(core/, storage/, curation/, stages/, engine/) is longer than MAX_LINES."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "storage", "curation", "stages", "engine")
MAX_LINES = 80
# "layer/file.py:function" -> why it may be longer. Keep it short: split the function instead.
ALLOWED: dict[str, str] = {}


def long_functions(root: Path = ROOT, limit: int = MAX_LINES) -> dict[str, int]:
    """``"layer/file.py:function"`` -> lines (decorators to last line) of every longer function."""
    out: dict[str, int] = {}
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                    lines = node.end_lineno - first + 1
                    if lines > limit:
                        out[f"{path.relative_to(root)}:{node.name}"] = lines
    return out


def test_no_function_in_the_inner_layers_is_longer_than_80_lines() -> None:
    too_long = {name: n for name, n in long_functions().items() if name not in ALLOWED}
    assert too_long == {}, f"split these into named steps (or say why in ALLOWED): {too_long}"
    stale = sorted(set(ALLOWED) - set(long_functions()))
    assert stale == [], f"no longer too long, remove from ALLOWED: {stale}"


def test_the_check_finds_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "long.py").write_text(f"def short():\n    pass\n\n\n@staticmethod\ndef long():\n{body}\n")
    assert long_functions(tmp_path) == {"engine/long.py:long": MAX_LINES + 2}
