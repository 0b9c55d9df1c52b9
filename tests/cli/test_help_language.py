"""`ksefd --help` speaks the environment's language (issue #14 point 1): no config is read yet, so
KSEFD_LANGUAGE, else LANG/LC_ALL/LC_MESSAGES starting with "en" → English, else Polish (the default)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ksefd import i18n

ROOT = Path(__file__).resolve().parents[2]


def _help(*args: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("KSEFD_LANGUAGE", "LANG", "LC_ALL", "LC_MESSAGES")}
    done = subprocess.run([sys.executable, "-m", "ksefd", *args, "--help"], cwd=ROOT, capture_output=True,
                          text=True, env={**clean, **env}, timeout=60, check=True)
    return done.stdout


def test_help_is_polish_by_default_and_english_with_an_english_locale() -> None:
    polish = _help(LANG="C.UTF-8")
    assert "demon KSeF (API 2.0)" in polish and "KSEFD_LANGUAGE" in polish
    assert "uruchom demona" in polish and "run the daemon:" not in polish
    english = _help(LANG="en_US.UTF-8")
    assert "KSeF (API 2.0) daemon for file-based ERPs" in english and "run the daemon:" in english
    assert "demon KSeF" not in english
    assert "plik konfiguracji demona" in _help("status", LANG="pl_PL.UTF-8")
    assert "the config file of the daemon" in _help("status", LC_ALL="en_GB.UTF-8", LANG="pl_PL.UTF-8")
    assert "uruchom demona" in _help(KSEFD_LANGUAGE="pl", LANG="en_US.UTF-8")      # ksefd's own choice wins


@pytest.mark.parametrize(("environ", "language"), [
    ({}, "pl"), ({"LANG": "C"}, "pl"), ({"LANG": "en_US.UTF-8"}, "en"), ({"LC_MESSAGES": "en"}, "en"),
    ({"LC_ALL": "pl_PL.UTF-8", "LANG": "en_US.UTF-8"}, "pl"), ({"KSEFD_LANGUAGE": "en", "LANG": "pl_PL"}, "en"),
])
def test_the_language_before_a_config_is_read(environ: dict[str, str], language: str) -> None:
    assert i18n.from_environment(environ) == language


def test_only_the_help_follows_the_locale_a_command_without_a_config_speaks_polish() -> None:
    """The config's `language` decides what ksefd says (Polish by default); the locale only picks --help's."""
    if sys.platform == "win32":
        pytest.skip("on Windows `ksefd service` talks to the Service Control Manager")
    clean = {k: v for k, v in os.environ.items() if k not in ("KSEFD_LANGUAGE", "LANG", "LC_ALL", "LC_MESSAGES")}
    done = subprocess.run([sys.executable, "-m", "ksefd", "service", "install"], cwd=ROOT, capture_output=True,
                          text=True, env={**clean, "LANG": "en_US.UTF-8"}, timeout=60, check=False)
    assert done.returncode == 2 and "w Linuksie zainstaluj jednostkę systemd" in done.stderr
