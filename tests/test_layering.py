"""The package layering of ARCHITECTURE.md, read from the import statements (with ``ast``,
so imports inside functions count too): the engine (core) stands on no method, model or
data code, and no library package depends on an experiment program."""
import ast
import glob
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = ("core", "pruning", "quant", "lowrank", "nas", "export")
# What each package may not import (top-level package names).
FORBIDDEN = {
    "core": {"pruning", "quant", "lowrank", "nas", "export", "models", "data", "experiments",
             "benchmarks"},
    **{package: {"experiments", "benchmarks"} for package in LIBRARY if package != "core"},
    # Programs use the library; benchmarks compare programs and peers, never the reverse.
    "experiments": {"benchmarks"},
}


def imported_packages(path: str):
    """(top-level package, line) of every import in a file, relative imports excluded."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module.split(".")[0], node.lineno


def violations(package: str):
    found = []
    for path in sorted(glob.glob(os.path.join(ROOT, package, "**", "*.py"), recursive=True)):
        for name, line in imported_packages(path):
            if name in FORBIDDEN[package]:
                found.append(f"{os.path.relpath(path, ROOT)}:{line} imports {name}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_packages_below_it(package):
    assert violations(package) == []


def test_the_checker_sees_imports_inside_functions(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import os\n\ndef f():\n    from experiments import preamble\n"
                    "    import models.zoo\n    from . import sibling\n")
    assert sorted(imported_packages(str(path))) == [("experiments", 4), ("models", 5),
                                                    ("os", 1)]


def test_every_experiment_program_lives_in_experiments():
    from experiments import registry
    programs = {registry.load(name).program for name in registry.experiment_paths()}
    assert programs and all(p.startswith("experiments.") for p in programs), programs
    import importlib
    for program in programs:
        assert callable(importlib.import_module(program).main), program
