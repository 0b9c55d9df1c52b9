"""Environments (issue #4 item 1, PROTOCOL.md §1): TEST, DEMO, PROD and a custom base URL such as the simulator."""

from __future__ import annotations

import pytest

from ksefd.ksef.client import KsefClient
from ksefd.ksef.environments import DEMO, PROD, TEST, custom, environment
from ksefd.ksef.errors import KsefError
from ksefd.ksef.qr import QR_HOSTS, qr_host


@pytest.mark.parametrize(("name", "api", "qr", "status"), [
    ("test", "https://api-test.ksef.mf.gov.pl/v2", "https://qr-test.ksef.mf.gov.pl",
     "https://api-latarnia-test.ksef.mf.gov.pl"),
    ("demo", "https://api-demo.ksef.mf.gov.pl/v2", "https://qr-demo.ksef.mf.gov.pl",
     "https://api-latarnia-test.ksef.mf.gov.pl"),               # the C# client uses TEST's Latarnia for DEMO
    ("prod", "https://api.ksef.mf.gov.pl/v2", "https://qr.ksef.mf.gov.pl", "https://api-latarnia.ksef.mf.gov.pl"),
])
def test_the_three_environments_have_the_ministrys_urls(name: str, api: str, qr: str, status: str) -> None:
    env = environment(name)
    assert (env.api_url, env.qr_url, env.status_url) == (api, qr, status)
    assert env.is_production == (name == "prod") and env.label == name.upper()
    assert f"https://{qr_host(name)}" == qr and f"https://{QR_HOSTS[name]}" == qr     # KOD I/II hosts (§8.5)


@pytest.mark.parametrize(("alias", "expected"), [(" PROD ", PROD), ("prd", PROD), ("production", PROD),
                                                 ("TE", TEST), ("tr", DEMO), ("Demo", DEMO)])
def test_names_as_people_write_them(alias: str, expected: object) -> None:
    assert environment(alias) == expected


def test_a_custom_base_url_keeps_the_environments_rules() -> None:
    sim = environment("prod", "http://127.0.0.1:8080/v2/")
    assert sim.api_url == "http://127.0.0.1:8080/v2" and sim.is_production and sim.qr_url == PROD.qr_url
    assert custom("http://127.0.0.1:8080/v2").name == "custom"
    client = KsefClient("demo", base_url="http://127.0.0.1:9/v2")
    assert client.transport.base_url == "http://127.0.0.1:9/v2" and client.environment.qr_url == DEMO.qr_url
    client = KsefClient(TEST, base_url="http://127.0.0.1:9/v2")
    assert client.environment.name == "test" and client.transport.base_url == "http://127.0.0.1:9/v2"


def test_bad_names_and_urls_are_refused_with_the_fix() -> None:
    with pytest.raises(KsefError, match="unknown KSeF environment 'staging'; use one of test, demo, prod"):
        environment("staging")
    with pytest.raises(KsefError, match="is not an http\\(s\\) URL"):
        environment("test", "127.0.0.1:8080/v2")
