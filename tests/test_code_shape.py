"""The size limits the code keeps to: no function in ``fxprune/`` or ``passes/`` longer than 60
lines or taking more than 8 parameters (``self``/``cls`` aside); argparse registration, a
list of options, is the one exception."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES, MAX_PARAMETERS = 60, 8


def _functions(folder: str):
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(ROOT), node


def _parameters(function: ast.FunctionDef) -> int:
    arguments = function.args
    names = [a.arg for a in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs)]
    names += [a.arg for a in (arguments.vararg, arguments.kwarg) if a is not None]
    return len([name for name in names if name not in ("self", "cls")])


def test_functions_stay_short_and_take_few_parameters():
    oversized = [f"{path}:{function.lineno} {function.name}: "
                 f"{function.end_lineno - function.lineno + 1} lines, "
                 f"{_parameters(function)} parameters"
                 for folder in ("fxprune", "passes") for path, function in _functions(folder)
                 if not (path.parts[:2] == ("fxprune", "commands") and function.name == "register")
                 and (function.end_lineno - function.lineno + 1 > MAX_LINES
                      or _parameters(function) > MAX_PARAMETERS)]
    assert oversized == []


def test_the_check_counts_lines_and_parameters():
    source = "def f(self, a, b, *c, d, **e):\n" + "    x = 1\n" * 70
    function = ast.parse(source).body[0]
    assert _parameters(function) == 5 and function.end_lineno - function.lineno + 1 == 71
