"""ksefd.config: the contract keys, defaults, every kind of bad value, paths and credentials."""

from __future__ import annotations

import datetime as dt
import re
import textwrap
from pathlib import Path

import msgspec
import pytest

from ksefd.config import ConfigError, load_config, nip_is_valid, parse_config
from ksefd.config import model as cfg

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config.example.toml"


@pytest.fixture
def creds(tmp_path: Path) -> dict[str, str]:
    directory = tmp_path / "credentials"
    directory.mkdir()
    for name in ("acme.token", "jan.crt", "jan.key", "jan.pass", "other.token"):
        (directory / name).write_text("secret\n")
    return {"CREDENTIALS_DIRECTORY": str(directory)}


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "ksefd.toml"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


MINIMAL = """
    [daemon]
    data_dir = "data"

    [[companies]]
    name = "acme"
    nip = "5265877635"
    token_file = "acme.token"
"""


def problems(tmp_path: Path, body: str, environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, body), environ=environ)
    return caught.value.english        # the same problems in the file's language: test_config_language.py


# --- the example and the contract ------------------------------------------------------------------

def test_the_example_loads(creds: dict[str, str]) -> None:
    config = load_config(EXAMPLE, environ=creds)
    assert config.source == EXAMPLE
    assert config.environment == "test" and config.base_url is None
    assert config.data_dir == REPO / "data"
    assert config.state_db == REPO / "state.sqlite3"
    acme, client = config.companies
    assert (acme.name, acme.nip, acme.send, acme.receive) == ("acme", "5265877635", True, True)
    assert acme.credentials.kind == "token"
    assert acme.credentials.token_file == Path(creds["CREDENTIALS_DIRECTORY"]) / "acme.token"
    assert acme.folders.outbox == REPO / "data" / "acme" / "outbox"
    assert acme.receiving.subject_types == ("Subject1", "Subject2")
    assert acme.receiving.reconcile_at == dt.time(2, 30)
    assert client.send is False and client.environment == "demo"
    assert client.credentials.kind == "certificate"
    assert client.sending.batch_threshold == 50
    assert client.receiving.subject_types == ("Subject2",)
    assert config.company("acme") is acme


def _documented_keys() -> set[str]:
    keys = set()
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\s*(?:#\s*)?([a-z_]+)\s*=", line)
        if match:
            keys.add(match.group(1))
    return keys


def test_the_example_documents_every_key() -> None:
    structs = [cfg.KsefSection, cfg.DaemonSection, cfg.SendingOptions, cfg.ReceivingOptions,
               cfg.CompanySection]
    known = {f for s in structs for f in s.__struct_fields__} - {"sending", "receiving"}
    assert known - _documented_keys() == set()
    assert _documented_keys() - known == set()


def test_the_example_line_by_line() -> None:
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        if re.match(r"^[a-z_]+\s*=", line):
            assert "#" in line, f"undocumented line: {line}"


def test_defaults(tmp_path: Path, creds: dict[str, str]) -> None:
    config = load_config(write(tmp_path, MINIMAL), environ=creds)
    company = config.companies[0]
    assert config.state_db == tmp_path / "data" / "state.sqlite3"
    assert config.rescan_interval_seconds == 30 and config.settle_seconds == 2
    assert config.log_format == "auto" and config.log_level == "info"
    assert company.send and company.receive and company.environment == "test"
    assert company.receiving == cfg.ReceivingOptions()
    assert company.receiving.subject_types == ("Subject2",) and company.receiving.cycle_minutes == 15
    assert company.receiving.inbox_layout == "flat" and company.receiving.backfill_from is None
    assert company.sending == cfg.SendingOptions()
    assert company.folders == cfg.Folders(*(tmp_path / "data" / "acme" / f
                                            for f in ("outbox", "sent", "rejected", "inbox", "offline")))


# --- NIP ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("nip", "ok"), [
    ("5265877635", True), ("1111111111", True), ("9999999999", True), ("1234567890", False), ("5265877636", False),
    ("526587763", False), ("526-587-76-35", False), ("PL5265877635", False), ("１２３４５６７８９０", False),
])
def test_nip_checksum(nip: str, ok: bool) -> None:
    assert nip_is_valid(nip) is ok


def test_bad_nip_is_named_with_value_and_fix(tmp_path: Path, creds: dict[str, str]) -> None:
    found = problems(tmp_path, MINIMAL.replace("5265877635", "5265877636"), creds)
    assert found == ['companies[0].nip: "5265877636" fails the NIP checksum (weights 6,5,7,2,3,4,5,6,7 mod 11); '
                     'check the digits against the company\'s registration (company "acme")']
    found = problems(tmp_path, MINIMAL.replace("5265877635", "526-587-76-35"), creds)
    assert found[0].startswith('companies[0].nip: "526-587-76-35" is not a NIP: write its 10 digits')


# --- structure ---------------------------------------------------------------------------------------

def test_unknown_keys_are_rejected_with_a_suggestion(tmp_path: Path, creds: dict[str, str]) -> None:
    body = MINIMAL.replace('token_file = "acme.token"', 'token_file = "acme.token"\ntoken_fiel = "x"')
    body += "\n[extra]\nx = 1\n"
    found = problems(tmp_path, body, creds)
    assert "extra: unknown top-level key; known: companies, daemon, ksef, receiving, sending" in found
    assert any(p.startswith("companies[0].token_fiel: unknown key; did you mean 'token_file'?") for p in found)


def test_unknown_key_in_a_section(tmp_path: Path, creds: dict[str, str]) -> None:
    found = problems(tmp_path, MINIMAL.replace("[daemon]", "[daemon]\nrescan = 5"), creds)
    assert found[0].startswith("daemon.rescan: unknown key; did you mean 'rescan_interval_seconds'?")


def test_bad_values_name_path_value_and_fix(tmp_path: Path, creds: dict[str, str]) -> None:
    body = MINIMAL.replace("[daemon]", '[ksef]\nenvironment = "production"\n\n[daemon]\nrescan_interval_seconds = -1')
    found = problems(tmp_path, body, creds)
    assert 'ksef.environment: "production" is invalid: use one of test, demo, prod' in found
    assert "daemon.rescan_interval_seconds: -1 is invalid: Expected float > 0.0" in found


def test_wrong_type(tmp_path: Path, creds: dict[str, str]) -> None:
    found = problems(tmp_path, MINIMAL.replace('name = "acme"', 'name = "acme"\nsend = "yes"'), creds)
    assert found == ['companies[0].send: "yes" is invalid: Expected bool, got str (company "acme")']


def test_required_keys(tmp_path: Path, creds: dict[str, str]) -> None:
    found = problems(tmp_path, "[ksef]\n", creds)
    assert "daemon.data_dir: is required (a [daemon] table with data_dir)" in found
    assert "companies: at least one [[companies]] block is required" in found
    found = problems(tmp_path, MINIMAL.replace('nip = "5265877635"', ""), creds)
    assert found == ['companies[0].nip: is required (company "acme")']


def test_not_toml(tmp_path: Path, creds: dict[str, str]) -> None:
    found = problems(tmp_path, "[daemon\n", creds)
    assert found[0].startswith("not valid TOML: ")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.toml")
    assert "nie ma takiego pliku" in str(caught.value)          # no config, no language: Polish, the default
    assert caught.value.english == [f"{tmp_path / 'nope.toml'}: no such file; pass the config file with -c PATH"]


def test_many_problems_are_reported_together(tmp_path: Path, creds: dict[str, str]) -> None:
    body = MINIMAL + """
    [[companies]]
    name = "bad name"
    nip = "123"
    token_file = "missing.token"

    [[companies]]
    name = "third"
    nip = "1111111111"
    colour = "red"
    """
    found = problems(tmp_path, body, creds)
    assert len(found) == 4, found
    assert any(p.startswith('companies[1].name: "bad name" is not a usable name') for p in found)
    assert any(p.startswith('companies[1].nip: "123" is not a NIP') for p in found)
    assert any(p.startswith('companies[1].token_file: "missing.token" not found') for p in found)
    assert any(p.startswith("companies[2].colour: unknown key") for p in found)
    assert "companies[1]" in str(ConfigError(found)) and "  - " in str(ConfigError(found))


def test_error_message_lists_the_source(tmp_path: Path, creds: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, MINIMAL.replace("5265877635", "5265877636")), environ=creds)
    assert str(caught.value).startswith(f"błędna konfiguracja w pliku {tmp_path / 'ksefd.toml'}:\n  - companies[0].nip")


# --- credentials ------------------------------------------------------------------------------------

def test_credentials_directory_for_bare_names(tmp_path: Path, creds: dict[str, str]) -> None:
    (tmp_path / "acme.token").write_text("beside the config")
    config = load_config(write(tmp_path, MINIMAL), environ=creds)
    assert config.companies[0].credentials.token_file == Path(creds["CREDENTIALS_DIRECTORY"]) / "acme.token"
    config = load_config(write(tmp_path, MINIMAL), environ={})
    assert config.companies[0].credentials.token_file == tmp_path / "acme.token"


def test_relative_and_absolute_credential_paths(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "acme.token").write_text("t")
    body = MINIMAL.replace('"acme.token"', '"secrets/acme.token"')
    config = load_config(write(tmp_path, body), environ={"CREDENTIALS_DIRECTORY": str(tmp_path / "nothing")})
    assert config.companies[0].credentials.token_file == tmp_path / "secrets" / "acme.token"
    absolute = MINIMAL.replace('"acme.token"', f'"{tmp_path / "secrets" / "acme.token"}"')
    assert load_config(write(tmp_path, absolute), environ={}).companies[0].credentials.token_file is not None


def test_missing_credential_says_where_it_looked(tmp_path: Path) -> None:
    found = problems(tmp_path, MINIMAL, {})
    assert found == [f'companies[0].token_file: "acme.token" not found: looked for {tmp_path / "acme.token"} '
                     '($CREDENTIALS_DIRECTORY is not set); give the path of an existing file (company "acme")']


def test_credential_combinations(tmp_path: Path, creds: dict[str, str]) -> None:
    both = MINIMAL.replace('token_file = "acme.token"', 'token_file = "acme.token"\ncertificate = "jan.crt"\n'
                                                        'private_key = "jan.key"')
    assert any("choose one way to authenticate" in p for p in problems(tmp_path, both, creds))
    no_key = MINIMAL.replace('token_file = "acme.token"', 'certificate = "jan.crt"')
    assert any(p.startswith("companies[0].private_key: is required with certificate")
               for p in problems(tmp_path, no_key, creds))
    none = MINIMAL.replace('token_file = "acme.token"', "")
    assert any("or certificate is required" in p for p in problems(tmp_path, none, creds))
    idle = none.replace('nip = "5265877635"', 'nip = "5265877635"\nsend = false\nreceive = false')
    assert load_config(write(tmp_path, idle), environ=creds).companies[0].credentials.kind == "none"
    (Path(creds["CREDENTIALS_DIRECTORY"]) / "jan.p12").write_bytes(b"x")
    p12 = MINIMAL.replace('token_file = "acme.token"',
                          'certificate = "jan.p12"\nprivate_key_password_file = "jan.pass"')
    assert load_config(write(tmp_path, p12), environ=creds).companies[0].credentials.kind == "certificate"


# --- environments and URLs ---------------------------------------------------------------------------

def test_base_url_rules(tmp_path: Path, creds: dict[str, str]) -> None:
    body = '[ksef]\nbase_url = "http://127.0.0.1:8080/v2"\n' + MINIMAL + """
    [[companies]]
    name = "prod-co"
    nip = "1111111111"
    environment = "prod"
    token_file = "other.token"
    """
    config = load_config(write(tmp_path, body), environ=creds)
    assert config.companies[0].base_url == "http://127.0.0.1:8080/v2"
    assert config.companies[1].base_url is None and config.companies[1].environment == "prod"
    found = problems(tmp_path, body.replace("127.0.0.1", "erp.example.com"), creds)
    assert found[0].startswith('ksef.base_url: "http://erp.example.com:8080/v2" uses plain http')
    found = problems(tmp_path, body.replace("http://127.0.0.1:8080/v2", "localhost:8080"), creds)
    assert found[0].startswith('ksef.base_url: "localhost:8080" is not an http(s) URL')


# --- uniqueness --------------------------------------------------------------------------------------

def test_names_nips_and_folders_must_be_unique(tmp_path: Path, creds: dict[str, str]) -> None:
    second = """
    [[companies]]
    name = "ACME"
    nip = "5265877635"
    token_file = "other.token"
    """
    found = problems(tmp_path, MINIMAL + second, creds)
    assert any(p.startswith('companies[1].name: "ACME" is already the name of company "acme"') for p in found)
    assert any(p.startswith('companies[1].nip: "5265877635" is also the NIP of company "acme" on test')
               for p in found)


def test_same_nip_on_another_environment_is_fine(tmp_path: Path, creds: dict[str, str]) -> None:
    second = """
    [[companies]]
    name = "acme-prod"
    nip = "5265877635"
    environment = "prod"
    token_file = "other.token"
    """
    assert len(load_config(write(tmp_path, MINIMAL + second), environ=creds).companies) == 2


def test_folder_overrides_and_clashes(tmp_path: Path, creds: dict[str, str]) -> None:
    body = MINIMAL + 'outbox = "/srv/erp/out"\ninbox = "in"\n'
    company = load_config(write(tmp_path, body), environ=creds).companies[0]
    assert company.folders.outbox == Path("/srv/erp/out") and company.folders.inbox == tmp_path / "in"
    clash = MINIMAL + """
    [[companies]]
    name = "beta"
    nip = "1111111111"
    token_file = "other.token"
    outbox = "data/acme/outbox"
    """
    found = problems(tmp_path, clash, creds)
    assert len(found) == 1 and found[0].startswith("companies[1].outbox: ")
    assert 'is also the outbox of company "acme"' in found[0]
    same = MINIMAL + 'sent = "data/acme/outbox"\n'
    assert 'is also the outbox of company "acme"' in problems(tmp_path, same, creds)[0]


# --- receiving and sending options -------------------------------------------------------------------

def test_receiving_options_merge_and_validate(tmp_path: Path, creds: dict[str, str]) -> None:
    body = MINIMAL.replace("[daemon]", '[receiving]\ncycle_minutes = 30\nbackfill_from = 2026-02-01\n'
                                       'inbox_layout = "year-month"\n\n[daemon]')
    body += ('\n[companies.receiving]\nsubject_types = ["Subject1", "SubjectAuthorized"]\n'
             'hook_marker_suffix = ".ready"\n')
    options = load_config(write(tmp_path, body), environ=creds).companies[0].receiving
    assert options.cycle_minutes == 30 and options.backfill_from == dt.date(2026, 2, 1)
    assert options.inbox_layout == "year-month" and options.hook_marker_suffix == ".ready"
    assert options.subject_types == ("Subject1", "SubjectAuthorized")
    bad = body.replace('"SubjectAuthorized"', '"Subject9"').replace('".ready"', '".xml"')
    found = problems(tmp_path, bad, creds)
    assert found[0].startswith('companies[0].receiving.subject_types[1]: "Subject9" is invalid: use one of Subject1')
    twice = body.replace('"SubjectAuthorized"', '"Subject1"').replace('".ready"', '".xml"')
    found = problems(tmp_path, twice, creds)
    assert any("lists a subject type twice" in p for p in found)
    assert any(p.startswith('companies[0].receiving.hook_marker_suffix: ".xml" must be a file suffix') for p in found)


def test_global_section_errors_are_reported_once(tmp_path: Path, creds: dict[str, str]) -> None:
    body = MINIMAL.replace("[daemon]", "[receiving]\ncycle_minutes = 0\n\n[daemon]")
    assert problems(tmp_path, body, creds) == ["receiving.cycle_minutes: 0 is invalid: Expected float >= 1.0"]


def test_hook_command_is_resolved(tmp_path: Path, creds: dict[str, str]) -> None:
    script = tmp_path / "bin" / "import.sh"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    body = MINIMAL + '\n[companies.receiving]\nhook_command = ["bin/import.sh", "--now"]\n'
    options = load_config(write(tmp_path, body), environ=creds).companies[0].receiving
    assert options.hook_command == (str(tmp_path / "bin" / "import.sh"), "--now")
    on_path = body.replace('"bin/import.sh"', '"sh"')
    options = load_config(write(tmp_path, on_path), environ=creds).companies[0].receiving
    assert options.hook_command is not None and Path(options.hook_command[0]).name == "sh"
    found = problems(tmp_path, body.replace("bin/import.sh", "bin/nope.sh"), creds)
    assert found[0].startswith('companies[0].receiving.hook_command: "bin/nope.sh" is not an existing program')


def test_sending_options(tmp_path: Path, creds: dict[str, str]) -> None:
    body = MINIMAL.replace("[daemon]", "[sending]\nbatch_threshold = 20\n\n[daemon]")
    body += "\n[companies.sending]\nonline_idle_close_seconds = 60\n"
    sending = load_config(write(tmp_path, body), environ=creds).companies[0].sending
    assert sending.batch_threshold == 20 and sending.online_idle_close_seconds == 60
    found = problems(tmp_path, body.replace("batch_threshold = 20", "batch_max_invoices = 20000"), creds)
    assert found == ["sending.batch_max_invoices: 20000 is invalid: Expected int <= 10000"]
    found = problems(tmp_path, body + "retry_min_seconds = 7200\n", creds)
    assert found[0].startswith("companies[0].sending.retry_min_seconds: 7200 is greater than retry_max_seconds")


def test_structs_are_frozen(tmp_path: Path, creds: dict[str, str]) -> None:
    company = load_config(write(tmp_path, MINIMAL), environ=creds).companies[0]
    with pytest.raises(AttributeError):
        company.receiving.cycle_minutes = 1  # type: ignore[misc]
    assert msgspec.structs.asdict(company.sending)["batch_threshold"] == 100


def test_parse_config_from_text(tmp_path: Path, creds: dict[str, str]) -> None:
    config = parse_config(textwrap.dedent(MINIMAL), base_dir=tmp_path, environ=creds)
    assert config.source is None and config.data_dir == tmp_path / "data"


# --- offline invoicing (issue #11) -------------------------------------------------------------------

def test_offline_policy_certificate_and_latarnia(tmp_path: Path, creds: dict[str, str]) -> None:
    config = load_config(write(tmp_path, MINIMAL), environ=creds)
    acme = config.companies[0]
    assert (acme.sending.offline, acme.sending.offline_after_seconds) == ("auto", 300)
    assert acme.folders.offline == tmp_path / "data" / "acme" / "offline"
    assert config.latarnia_url is None and config.latarnia_interval_seconds == 900
    body = MINIMAL + '\n[companies.sending]\noffline = "off"\noffline_after_seconds = 60\n'
    sending = load_config(write(tmp_path, body), environ=creds).companies[0].sending
    assert (sending.offline, sending.offline_after_seconds) == ("off", 60)
    found = problems(tmp_path, body.replace('offline = "off"', 'offline = "sometimes"'), creds)
    assert found == ['companies[0].sending.offline: "sometimes" is invalid: use one of auto, off (company "acme")']
    signer = MINIMAL.replace('token_file = "acme.token"', 'token_file = "acme.token"\noffline_certificate = "jan.crt"')
    assert any(p.startswith("companies[0].offline_private_key: is required with offline_certificate")
               for p in problems(tmp_path, signer, creds))
    signed = signer + 'offline_private_key = "jan.key"\noffline_private_key_password_file = "jan.pass"\n'
    files = load_config(write(tmp_path, signed), environ=creds).companies[0].credentials
    assert files.offline_certificate is not None and files.offline_private_key_password_file is not None
    remote = '[ksef]\nlatarnia_url = "http://status.example.com"\n' + MINIMAL
    assert problems(tmp_path, remote, creds)[0].startswith('ksef.latarnia_url: "http://status.example.com" uses plain')
    fast = '[ksef]\nlatarnia_interval_seconds = 10\n' + MINIMAL
    assert problems(tmp_path, fast, creds)[0].startswith("ksef.latarnia_interval_seconds: 10 is invalid")
