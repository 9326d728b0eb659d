"""docs/security.md's threat model names the test behind each line: every test it names must
exist, so a renamed or deleted test cannot leave a claim standing on nothing.

A reference is `tests/<path>.py::test_name`, optionally with a parameter id (`[sysctl-dir-etc]`);
a bare `[id]` next to one names more ids of the same test. An id is a file of
tests/data/invalid-policies/ or an agreement case of tests/unit/test_crd_cel.py.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

from tests.unit.test_crd_cel import agreement_cases

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "security.md"
INVALID = REPO / "tests" / "data" / "invalid-policies"
PRINCIPALS = [
    "Policy writer",
    "Job-namespace user",
    "Operator token holder",
    "Node",
    "Workload owner",
    "Cluster admin (break glass)",
]
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)(?:\[([\w.-]+)\])?`")
MORE_IDS = re.compile(r"`\[([\w.-]+)\]`")


def threat_model() -> str:
    text = DOC.read_text()
    start = text.index("\n## Threat model\n")
    return text[start : text.index("\n## ", start + 1)]


@functools.cache
def defined_functions(path: str) -> frozenset[str]:
    tree = ast.parse((REPO / path).read_text())
    return frozenset(
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    )


def known_id(ident: str) -> bool:
    """An invalid policy (by stem, or by file name as test_crd_cel's ids spell it) or an
    agreement case."""
    stem = ident.removesuffix(".yaml")
    return (INVALID / f"{stem}.yaml").is_file() or ident in {c.id for c in agreement_cases()}


def test_the_threat_model_has_a_table_per_principal() -> None:
    section = threat_model()
    for principal in PRINCIPALS:
        assert f"\n### {principal}\n" in section, principal
    assert "\n### Not defended\n" in section
    assert "\n### Not backed by a test yet\n" in section


def test_every_test_the_security_doc_names_exists() -> None:
    text = DOC.read_text()
    references = REFERENCE.findall(text)
    assert len(references) >= 60
    missing = [
        f"{path}::{name}"
        for path, name, _ in references
        if not (REPO / path).is_file() or name not in defined_functions(path)
    ]
    assert missing == []
    ids = [ident for _, _, ident in references if ident] + MORE_IDS.findall(text)
    assert [ident for ident in ids if not known_id(ident)] == []


def test_every_can_and_cannot_line_names_a_test_or_says_it_has_none() -> None:
    rows = [
        line for line in threat_model().splitlines() if line.startswith(("| can |", "| cannot |"))
    ]
    assert len(rows) >= 40
    unproved = [
        row
        for row in rows
        if not REFERENCE.search(row.rsplit("|", 2)[1]) and "not backed by a test yet" not in row
    ]
    assert unproved == []
