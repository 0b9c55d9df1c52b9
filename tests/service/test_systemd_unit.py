"""systemd/check-unit.sh: the unit verifies cleanly and its exposure stays "OK" (issue #12 item 1)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "systemd"
TOOLS = ("systemd-analyze", "systemd-sysusers", "systemd-tmpfiles")

pytestmark = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                reason="systemd-analyze/sysusers/tmpfiles not installed (Debian: apt install systemd)")


def run_check(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(folder / "check-unit.sh"), *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_the_shipped_unit_passes_verify_security_and_the_snippets() -> None:
    result = run_check(SYSTEMD_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verify: OK" in result.stdout
    assert "sysusers/tmpfiles: OK" in result.stdout
    level = float(result.stdout.split("security: exposure ", 1)[1].split()[0])
    assert level <= 3.0


def test_the_key_settings_are_in_the_unit() -> None:
    text = (SYSTEMD_DIR / "ksefd.service").read_text(encoding="utf-8")
    for line in ("Type=notify", "User=ksefd", "RestartPreventExitStatus=78", "Restart=on-failure",
                 "ExecStart=/usr/local/bin/ksefd run -c /etc/ksefd/ksefd.toml", "StateDirectory=ksefd",
                 "ConfigurationDirectory=ksefd", "LogsDirectory=ksefd", "SystemCallFilter=@system-service",
                 "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "CapabilityBoundingSet=\n"):
        assert line in text + "\n", line
    assert "\nExecReload=/bin/kill -HUP $MAINPID\n" in text     # SIGHUP reloads the config (daemon/reload.py)


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    folder = tmp_path / "systemd"
    shutil.copytree(SYSTEMD_DIR, folder)
    return folder


def test_a_misspelt_key_fails_verify(scratch: Path) -> None:
    unit = scratch / "ksefd.service"
    unit.write_text(unit.read_text(encoding="utf-8").replace("Type=notify", "Typ=notify"), encoding="utf-8")
    result = run_check(scratch)
    assert result.returncode != 0
    assert "verify: FAILED" in result.stdout and "Unknown key" in result.stdout


def test_weaker_hardening_fails_the_exposure_threshold(scratch: Path) -> None:
    unit = scratch / "ksefd.service"
    text = unit.read_text(encoding="utf-8")
    for key in ("ProtectSystem=strict", "ProtectHome=yes", "PrivateDevices=yes", "PrivateUsers=yes",
                "SystemCallFilter=@system-service", "CapabilityBoundingSet=\n", "RestrictNamespaces=yes"):
        text = text.replace(key, "")
    unit.write_text(text, encoding="utf-8")
    result = run_check(scratch)
    assert result.returncode != 0
    assert "security: exposure" in result.stdout and "FAILED" in result.stdout


def test_a_lower_maximum_is_honoured() -> None:
    result = run_check(SYSTEMD_DIR, "0.5")
    assert result.returncode != 0
    assert "(max 0.5): FAILED" in result.stdout


def test_a_broken_sysusers_snippet_fails(scratch: Path) -> None:
    (scratch / "ksefd.sysusers").write_text("x ksefd - nonsense\n", encoding="utf-8")
    result = run_check(scratch)
    assert result.returncode != 0
    assert "sysusers/tmpfiles: FAILED" in result.stdout
