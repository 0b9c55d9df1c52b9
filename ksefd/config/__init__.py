"""The configuration file (DESIGN.md, config contract; issues #5 and #6): parsed once, validated once.

TOML is read with tomllib and converted into msgspec Structs that reject unknown keys; then the
values are checked (NIP checksums, credentials present, names and folders unique). Every problem
found is collected into one `ConfigError`, each naming the field path, the value and the fix, e.g.
`companies[1].nip: "5265877636" fails the NIP checksum ...`. Company indexes count from 0, in the
order of the `[[companies]]` blocks; the company's name is added when it is known.

Paths: relative paths resolve against the config file's folder. A credential given as a bare name
(no folder part) is looked up first in systemd's `$CREDENTIALS_DIRECTORY` (LoadCredential=), then
beside the config file.

Uniqueness, and why:
* company names, case-insensitively: each names a folder (`data_dir/<name>`, Windows and macOS
  folders ignore case), a label in logs and status, and the key of its rows in the state database;
* NIP per KSeF target (environment or base URL): KSeF keeps rate limits, the HWM checkpoint and the
  duplicate key per NIP context, so two entries for one NIP would spend one quota twice and deliver
  the same invoices twice. The same NIP on TEST and on PROD are different contexts and allowed;
* every company folder (outbox, sent, rejected, inbox) across all companies: a shared outbox would
  send one invoice as two companies, a shared inbox would mix their purchases.
"""

from .field_checks import is_loopback
from .load import load_config, parse_config
from .model import (
    Company,
    Config,
    ConfigError,
    Credentials,
    Environment,
    Folders,
    ReceivingOptions,
    SendingOptions,
    SubjectType,
    nip_is_valid,
)

__all__ = [
    "Company", "Config", "ConfigError", "Credentials", "Environment", "Folders", "ReceivingOptions",
    "SendingOptions", "SubjectType", "is_loopback", "load_config", "nip_is_valid", "parse_config",
]
