"""The shape the style asks of library and program code: no file over 500 lines and no
function over 80 lines (issue 16's acceptance), so each file holds one concept and each
function one step. Tests and experiment configs (``*/configs/``: data written as code) are
exempt. Lengths are read with ``ast`` (a function runs from its ``def`` line, decorators
excluded, to its last line, nested functions counted on their own as well as inside their
parent), so the numbers are those an editor shows.
"""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80
SKIPPED_DIRS = {"tests", ".venv", ".git", "__pycache__", "configs"}


def project_files():
    """Repository-relative paths of every .py file outside tests, configs and the venv."""
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.relpath(os.path.join(folder, name), ROOT)


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES):
    """``(qualified name, lines)`` of each function (nested included) over ``limit`` lines."""
    found = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    length = child.end_lineno - child.lineno + 1
                    if length > limit:
                        found.append((name, length))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def _read(rel):
    with open(os.path.join(ROOT, rel)) as f:
        return f.read()


def _body(n: int, indent: str = "    ") -> str:
    return "\n".join(f"{indent}x{i} = {i}" for i in range(n))


def test_the_measure_counts_what_it_should():
    source = ("@decorator\ndef at_limit():\n" + _body(79) + "\n\n"
              "class C:\n    def method(self):\n" + _body(81, " " * 8) + "\n\n"
              "def outer():\n    async def inner():\n" + _body(80, " " * 8)
              + "\n    return inner\n")
    assert long_functions(source) == [("C.method", 82), ("outer", 83), ("outer.inner", 81)]
    assert long_functions(source, limit=100) == []
    walked = set(project_files())
    assert os.path.join("lowrank", "factorize.py") in walked
    assert os.path.join("core", "primitives.py") in walked
    assert not any(p.split(os.sep)[0] in ("tests", ".venv") or "configs" in p.split(os.sep)
                   for p in walked)


def test_no_file_over_500_lines():
    long = {rel: n for rel in project_files()
            if (n := len(_read(rel).splitlines())) > MAX_FILE_LINES}
    assert not long, f"files over {MAX_FILE_LINES} lines (split by concept): {long}"


def test_no_function_over_80_lines():
    long = {f"{rel}::{name}": n for rel in project_files()
            for name, n in long_functions(_read(rel))}
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split into steps): {long}"

