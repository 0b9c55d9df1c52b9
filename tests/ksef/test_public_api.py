"""`ksefd.ksef` has a public API (issue #9 point 6): everything its callers outside the package import from its
modules is importable from the package itself, and `__all__` names only what exists."""

from __future__ import annotations

import ast
from pathlib import Path

import ksefd.ksef

ROOT = Path(__file__).resolve().parents[2] / "ksefd"


def names_imported_from_client_modules() -> set[str]:
    found: set[str] = set()
    for path in ROOT.rglob("*.py"):
        if path.is_relative_to(ROOT / "ksef"):
            continue
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ksefd.ksef"):
                found.update(alias.name for alias in node.names)
    return found


def test_every_name_callers_use_is_in_the_public_api() -> None:
    missing = names_imported_from_client_modules() - set(ksefd.ksef.__all__)
    assert missing == set(), f"add to ksefd/ksef/__init__.py: {sorted(missing)}"


def test_all_names_only_what_exists() -> None:
    assert len(ksefd.ksef.__all__) == len(set(ksefd.ksef.__all__))
    for name in ksefd.ksef.__all__:
        assert getattr(ksefd.ksef, name, None) is not None, name
