"""One name, one meaning: no two classes of the operator package share a name, and no constant
is written down twice.

Two `PortRange`s (the CRD's `{min, max}` model and the kernel's range math) and two
`WorstNode`s once lived side by side; a reader, or an import completed by an editor, could not
tell which was meant, and a constant copied into a second module can drift from the first.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import pkgutil
from collections import defaultdict
from pathlib import Path

import devcluster
import nodesysctl

# The operator and the dev cluster beside it: a reader meets both, so no name means two things.
PACKAGES = (nodesysctl, devcluster)


def module_names() -> list[str]:
    names = []
    for package in PACKAGES:
        prefix = package.__name__
        names.append(prefix)
        names += [info.name for info in pkgutil.walk_packages(package.__path__, prefix + ".")]
    return names


def source_of(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    assert spec is not None, module
    assert spec.origin is not None, module
    return Path(spec.origin)


def test_the_walk_sees_the_whole_package() -> None:
    names = module_names()
    assert {"nodesysctl.api", "nodesysctl.ports", "nodesysctl.agent.contract"} <= set(names)
    assert {"devcluster.cluster", "devcluster.kubelet.simulated"} <= set(names)


def test_no_two_classes_share_a_name() -> None:
    defined_in: dict[str, set[str]] = defaultdict(set)
    for name in module_names():
        if name.rsplit(".", 1)[-1] == "__main__":
            continue  # importing it runs the program
        module = importlib.import_module(name)
        for value in vars(module).values():
            if inspect.isclass(value) and value.__module__ == name:
                defined_in[value.__name__].add(name)
    shared = {cls: sorted(modules) for cls, modules in defined_in.items() if len(modules) > 1}
    assert shared == {}


def literal_constants(tree: ast.Module) -> list[str]:
    """Module-level UPPER_CASE names bound to a literal (a number, a string, a tuple of them...)."""
    found: list[str] = []
    for statement in tree.body:
        if isinstance(statement, ast.Assign):
            targets, value = statement.targets, statement.value
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            targets, value = [statement.target], statement.value
        else:
            continue
        try:
            ast.literal_eval(value)
        except ValueError:
            continue  # computed from something else (an import, a call): not a second copy
        for target in targets:
            if isinstance(target, ast.Name) and target.id.lstrip("_").isupper():
                found.append(target.id)
    return found


def test_no_constant_is_written_down_in_two_modules() -> None:
    defined_in: dict[str, set[str]] = defaultdict(set)
    for name in module_names():
        tree = ast.parse(source_of(name).read_text(encoding="utf-8"))
        for constant in literal_constants(tree):
            defined_in[constant].add(name)
    copied = {const: sorted(modules) for const, modules in defined_in.items() if len(modules) > 1}
    assert copied == {}
