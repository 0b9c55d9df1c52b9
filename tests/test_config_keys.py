"""Config keys of issue #14: `enabled = false` per company (point 4) and "did you mean" for a mistyped
section (point 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ksefd.config import ConfigError, load_config
from tests.test_config import MINIMAL, creds, write  # noqa: F401  (creds is a fixture)


def test_a_switched_off_company_is_not_run_but_named(tmp_path: Path, creds: dict[str, str]) -> None:  # noqa: F811
    body = MINIMAL + """
    [[companies]]
    name = "other"
    nip = "1111111111"
    enabled = false
    token_file = "other.token"
    """
    config = load_config(write(tmp_path, body), environ=creds)
    assert [c.name for c in config.companies] == ["acme"]
    assert config.switched_off == ("other",)


def test_a_switched_off_company_still_needs_a_unique_name(tmp_path: Path, creds: dict[str, str]) -> None:  # noqa: F811
    body = MINIMAL + """
    [[companies]]
    name = "acme"
    nip = "1111111111"
    enabled = false
    token_file = "other.token"
    """
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, body), environ=creds)
    assert any("acme" in p for p in caught.value.english)


def test_a_mistyped_section_gets_did_you_mean(tmp_path: Path, creds: dict[str, str]) -> None:  # noqa: F811
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, MINIMAL.replace("[daemon]", "[deamon]")), environ=creds)
    assert "deamon: unknown top-level key; did you mean [daemon]? known: companies, daemon, ksef, receiving, " \
           "sending" in caught.value.english
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, MINIMAL + "\n[zzz]\n"), environ=creds)
    assert "zzz: unknown top-level key; known: companies, daemon, ksef, receiving, sending" in caught.value.english
