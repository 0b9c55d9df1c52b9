"""The FA(3) schema compile must not depend on what other threads parse (issue #15 point 6).

Before the fix about one fresh process in five failed (`benchmarks/schema_race.py`); 24 fresh processes
all pass only by luck (~0.5 %) on the old code, and always on the new.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest

from ksefd.invoice import SchemaUnavailable, check_invoice, load_schema, schema

ROOT = Path(__file__).resolve().parents[2]
RUNS = 12   # per mode; each fresh process takes ~0.1 s


def _run_pair(mode: list[str]) -> list[str]:
    """Two fresh processes at once (the machine has two cores); the errors of those that failed."""
    processes = [subprocess.Popen([sys.executable, "-m", "tests.support.schema_race", *mode], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    failures = []
    for process in processes:
        _, err = process.communicate(timeout=60)
        if process.returncode != 0:
            failures.append(err.strip()[:300])
    return failures


@pytest.mark.parametrize("mode", [[], ["plain"]], ids=["check-thread", "plain-lxml"])
def test_compile_beside_parsing_threads_never_fails(mode: list[str]) -> None:
    failures = [error for _ in range(RUNS // 2) for error in _run_pair(mode)]
    assert failures == []


def test_load_schema_compiles_once_and_checks_use_it() -> None:
    load_schema()
    compiled = schema.fa3_schema()
    load_schema()
    assert schema.fa3_schema() is compiled


def test_a_broken_installation_fails_fast_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schema, "_schema", None)
    monkeypatch.setattr(schema, "_XSD_DIR", "data/xsd/missing")
    with pytest.raises(SchemaUnavailable, match="reinstall ksefd"):
        load_schema()
    with pytest.raises(SchemaUnavailable):   # a check does not get a raw libxml2 error either
        check_invoice(b"<a/>", file_name="a.xml", company_nip="9999999999", today=dt.date(2026, 1, 1))
