"""KSeF environments: TEST, DEMO, PROD and a custom base URL such as the simulator (PROTOCOL.md §1)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from ksefd.i18n import N_

from .errors import KsefError
from .texts import said


@dataclass(frozen=True)
class Environment:
    name: str                 # "test" | "demo" | "prod" | "custom"
    api_url: str              # base URL, every path is appended to it (".../v2")
    qr_url: str               # host for KOD I / KOD II links (PROTOCOL.md §8.5)
    status_url: str = ""      # "Latarnia" status service (PROTOCOL.md §1); empty when unknown

    @property
    def is_production(self) -> bool:
        return self.name == "prod"

    @property
    def label(self) -> str:
        return {"test": "TEST", "demo": "DEMO", "prod": "PROD"}.get(self.name, f"custom ({self.api_url})")


TEST = Environment("test", "https://api-test.ksef.mf.gov.pl/v2", "https://qr-test.ksef.mf.gov.pl",
                   "https://api-latarnia-test.ksef.mf.gov.pl")
DEMO = Environment("demo", "https://api-demo.ksef.mf.gov.pl/v2", "https://qr-demo.ksef.mf.gov.pl",
                   "https://api-latarnia-test.ksef.mf.gov.pl")   # the C# client uses TEST's Latarnia for DEMO
PROD = Environment("prod", "https://api.ksef.mf.gov.pl/v2", "https://qr.ksef.mf.gov.pl",
                   "https://api-latarnia.ksef.mf.gov.pl")
ENVIRONMENTS = {"test": TEST, "demo": DEMO, "prod": PROD}


def custom(base_url: str, qr_url: str = TEST.qr_url) -> Environment:
    """A custom base URL (e.g. the simulator's `http://127.0.0.1:PORT/v2`); QR links default to TEST's host."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise KsefError(said(N_("base_url {url} is not an http(s) URL; expected e.g. http://127.0.0.1:8080/v2"),
                             url=repr(base_url)))
    return Environment("custom", base_url.rstrip("/"), qr_url.rstrip("/"))


def environment(name: str, base_url: str | None = None) -> Environment:
    """The environment named in config (`test`, `demo`, `prod`), optionally with its URL overridden."""
    key = name.strip().lower()
    aliases = {"prd": "prod", "production": "prod", "te": "test", "tr": "demo"}
    key = aliases.get(key, key)
    if key not in ENVIRONMENTS:
        raise KsefError(said(N_("unknown KSeF environment {name}; use one of test, demo, prod"), name=repr(name)))
    known = ENVIRONMENTS[key]
    if base_url:
        return Environment(known.name, custom(base_url).api_url, known.qr_url, known.status_url)
    return known
