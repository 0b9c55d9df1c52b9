"""Config errors in the file's own [daemon] language (issue #14): Polish by default, English with
language = "en"; each names the file, the key, the value and the fix; the logs get the English words."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ksefd.cli import main
from ksefd.config import ConfigError, load_config

BODY = """
    [daemon]
    data_dir = "data"
    {language}

    [deamon]
    x = 1

    [[companies]]
    name = "acme"
    nip = "5265877636"
    token_file = "acme.token"
"""


def write(tmp_path: Path, language: str = "") -> Path:
    (tmp_path / "acme.token").write_text("secret\n")
    path = tmp_path / "ksefd.toml"
    path.write_text(textwrap.dedent(BODY.format(language=language)), encoding="utf-8")
    return path


def test_polish_by_default_with_the_file_the_key_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path))
    text = str(caught.value)
    assert text.startswith(f"błędna konfiguracja w pliku {tmp_path / 'ksefd.toml'}:")
    assert '  - companies[0].nip: "5265877636" ma błędną cyfrę kontrolną NIP' in text
    assert 'porównaj cyfry z danymi rejestrowymi firmy (firma "acme")' in text
    assert "  - deamon: nieznana sekcja; czy chodziło o [daemon]?" in text
    # The logs (a rejected reload) keep English.
    assert any(p.startswith('companies[0].nip: "5265877636" fails the NIP checksum') for p in caught.value.english)


def test_english_with_language_en(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, 'language = "en"'))
    text = str(caught.value)
    assert text.startswith(f"invalid configuration in {tmp_path / 'ksefd.toml'}:")
    assert "  - deamon: unknown top-level key; did you mean [daemon]?" in text
    assert caught.value.problems == caught.value.english


def test_not_toml_follows_the_language_line(tmp_path: Path) -> None:
    path = tmp_path / "ksefd.toml"
    path.write_text('[daemon]\nlanguage = "en"\ndata_dir = "data\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems[0].startswith("not valid TOML: ")
    path.write_text('[daemon]\ndata_dir = "data\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems[0].startswith("to nie jest poprawny TOML: ")


@pytest.mark.parametrize(("language", "expected"), [("", "błędna konfiguracja w pliku"),
                                                    ('language = "en"', "invalid configuration in")])
def test_the_cli_prints_them_and_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str], language: str,
                                          expected: str) -> None:
    assert main(["status", "-c", str(write(tmp_path, language))]) == 78
    err = capsys.readouterr().err
    assert err.startswith(f"ksefd: {expected} {tmp_path / 'ksefd.toml'}:") and "companies[0].nip" in err
