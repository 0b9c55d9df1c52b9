"""`/metrics` in the Prometheus text format (issue #12 point 5), with prometheus-client.

Two sources, so that no invoice pays for being counted:

* what only the running process sees, counted as it happens: the latency of every KSeF request and every 429,
  per company and rate-limit group, from the KSeF client's transport observers (ksefd/ksef/transport.py);
* everything else is read from the state database when Prometheus scrapes (`snapshot`, a few grouped
  queries per company) and handed to a custom Collector: queue depth by state, accepted and rejected totals,
  in-doubt invoices, holds, the oldest offline deadline, the inbox checkpoints, the days left on each
  company's credential, the age of the heartbeat.

Labels are company names, states, groups and subject types: never a token, a NIP context's access token or
a file's content.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ksefd import __version__
from ksefd.clock import Clock, warsaw_date
from ksefd.config import Config
from ksefd.ksef import Exchange, KsefClient
from ksefd.store import InvoiceState, Store

from .credential_expiry import expiries
from .status import start_of_today

S = InvoiceState
ACCEPTED = (S.ACCEPTED, S.UPO_SAVED, S.DONE)
# KSeF answers within a second or two; an upload of a batch part or a slow export can take minutes.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
UNKNOWN_COMPANY = "-"          # unauthenticated calls (the login's first steps, public keys) and pre-signed URLs


class RequestMetrics:
    """KSeF request latency and 429s as they happen, attached to each client's transport (`watch`)."""

    def __init__(self, config: Config) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # The transport reports the context ("Nip:5265877635"): the company is the one configured for that NIP.
        self._companies = {f"Nip:{c.nip}": c.name for c in config.companies}
        self.latency = Histogram("ksefd_ksef_request_duration_seconds",
                                 "Time from sending a KSeF API request to its answer (each attempt), by company "
                                 "and KSeF rate-limit group", ["company", "group"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.rate_limited = Counter("ksefd_ksef_rate_limited",
                                    "KSeF answers 429 (Too Many Requests), by company and rate-limit group",
                                    ["company", "group"], registry=self.registry)
        self.failed = Counter("ksefd_ksef_requests_unanswered",
                              "KSeF requests that got no answer (connection failed, reset, timed out)",
                              ["company", "group"], registry=self.registry)
        self._watched: set[int] = set()

    def watch(self, client: KsefClient) -> None:
        """Count the requests of `client` (once per client, however often it is asked)."""
        if id(client) not in self._watched:
            self._watched.add(id(client))
            client.transport.observers.append(self.observe)

    def observe(self, exchange: Exchange) -> None:
        company = self._companies.get(exchange.context, UNKNOWN_COMPANY)
        group = exchange.group or "presigned"
        if exchange.status is None:
            self.failed.labels(company, group).inc()
            return
        self.latency.labels(company, group).observe(exchange.seconds)
        if exchange.status == 429:
            self.rate_limited.labels(company, group).inc()


@dataclass
class CompanyNumbers:
    name: str
    states: dict[InvoiceState, int]
    accepted_today: int
    rejected_today: int
    on_hold: str | None                       # the hold's code
    oldest_offline_deadline: dt.datetime | None
    inbox_checkpoints: dict[str, dt.datetime | None]
    credential_kind: str | None = None
    credential_days: int | None = None


@dataclass
class Snapshot:
    at: dt.datetime
    heartbeat_age: float | None
    companies: list[CompanyNumbers] = field(default_factory=list)


async def snapshot(store: Store, config: Config, clock: Clock) -> Snapshot:
    """What /metrics shows from the state database, read now (a few queries per company)."""
    now = clock.now()
    today = start_of_today(clock)
    beat = next((b for b in await store.heartbeat.read() if b.component == "daemon"), None)
    result = Snapshot(now, (now - beat.at).total_seconds() if beat is not None else None)
    holds = {h.company: h.code for h in await store.holds.all()}
    checkpoints = await store.inbox.checkpoints()
    for company in config.companies:
        states = await store.invoices.counts(company.name)
        offline = (await store.invoices.in_state(company.name, S.OFFLINE, limit=10_000)
                   if states.get(S.OFFLINE) else [])
        deadlines = [row.offline_deadline for row in offline if row.offline_deadline is not None]
        result.companies.append(CompanyNumbers(
            name=company.name, states=states,
            accepted_today=await store.events.count_reached(company.name, S.ACCEPTED, today),
            rejected_today=await store.events.count_reached(company.name, S.REJECTED, today),
            on_hold=holds.get(company.name), oldest_offline_deadline=min(deadlines, default=None),
            inbox_checkpoints={c.subject_type: c.next_from for c in checkpoints if c.company == company.name}))
    by_name = {c.name: c for c in result.companies}
    day = warsaw_date(now)
    for expiry in expiries(config):
        numbers = by_name[expiry.company]
        numbers.credential_kind, numbers.credential_days = expiry.kind, expiry.days_left(day)
    return result


class SnapshotCollector(Collector):
    """Yields the metrics of one `Snapshot` (made for one scrape)."""

    def __init__(self, taken: Snapshot) -> None:
        self.taken = taken

    def collect(self) -> Iterator[Metric]:
        taken = self.taken
        depth = GaugeMetricFamily("ksefd_outbox_invoices", "Outbox invoices in the state database, by company and "
                                  "state (see DESIGN.md, an invoice's life)", labels=["company", "state"])
        accepted = CounterMetricFamily("ksefd_invoices_accepted", "Invoices KSeF accepted (a KSeF number "
                                       "assigned), by company", labels=["company"])
        rejected = CounterMetricFamily("ksefd_invoices_rejected", "Invoices rejected, locally or by KSeF, by "
                                       "company", labels=["company"])
        today = GaugeMetricFamily("ksefd_invoices_today", "Invoices accepted / rejected since midnight, Polish time",
                                  labels=["company", "outcome"])
        in_doubt = GaugeMetricFamily("ksefd_invoices_in_doubt", "Invoices whose send answer was lost; ksefd asks "
                                     "KSeF before anything else", labels=["company"])
        hold = GaugeMetricFamily("ksefd_company_on_hold", "1 while the company is on hold (a person must act), "
                                 "with the hold's code", labels=["company", "code"])
        offline = GaugeMetricFamily("ksefd_offline_oldest_deadline_timestamp_seconds", "The earliest deadline of "
                                    "an offline invoice not yet sent (Unix time)", labels=["company"])
        inbox = GaugeMetricFamily("ksefd_inbox_lag_seconds", "How far the inbox checkpoint (the KSeF high-water mark "
                                  "of the last export, PROTOCOL.md §6.4) is behind now", labels=["company",
                                                                                                  "subject_type"])
        expiry = GaugeMetricFamily("ksefd_credential_expiry_days", "Days until the company's credential stops "
                                   "logging in (a certificate's notAfter; a KSeF token: 31.12.2026)",
                                   labels=["company", "kind"])
        for c in taken.companies:
            for state in InvoiceState:
                depth.add_metric([c.name, state.value], c.states.get(state, 0))
            accepted.add_metric([c.name], sum(c.states.get(s, 0) for s in ACCEPTED))
            rejected.add_metric([c.name], c.states.get(S.REJECTED, 0))
            today.add_metric([c.name, "accepted"], c.accepted_today)
            today.add_metric([c.name, "rejected"], c.rejected_today)
            in_doubt.add_metric([c.name], c.states.get(S.IN_DOUBT, 0))
            hold.add_metric([c.name, c.on_hold or ""], 1 if c.on_hold else 0)
            if c.oldest_offline_deadline is not None:
                offline.add_metric([c.name], c.oldest_offline_deadline.timestamp())
            for subject, checkpoint in sorted(c.inbox_checkpoints.items()):
                if checkpoint is not None:
                    inbox.add_metric([c.name, subject], max(0.0, (taken.at - checkpoint).total_seconds()))
            if c.credential_kind is not None and c.credential_days is not None:
                expiry.add_metric([c.name, c.credential_kind], c.credential_days)
        heartbeat = GaugeMetricFamily("ksefd_heartbeat_age_seconds", "Seconds since the daemon's last heartbeat in "
                                      "the state database")
        if taken.heartbeat_age is not None:
            heartbeat.add_metric([], taken.heartbeat_age)
        yield from (depth, accepted, rejected, today, in_doubt, hold, offline, inbox, expiry, heartbeat)


class ConnectionCollector(Collector):
    """What /readyz sees, for alerting: 1 while the company is logged in to KSeF, and the build."""

    def __init__(self, states: Mapping[str, str]) -> None:
        self.states = states

    def collect(self) -> Iterator[Metric]:
        connected = GaugeMetricFamily("ksefd_company_connected", "1 while the company is logged in to KSeF (0: "
                                      "connecting, or on hold; see ksefd_company_on_hold)", labels=["company"])
        for company, state in sorted(self.states.items()):
            connected.add_metric([company], 1 if state == "connected" else 0)
        info = GaugeMetricFamily("ksefd_build_info", "The running ksefd's version", labels=["version"])
        info.add_metric([__version__], 1)
        yield from (connected, info)


def exposition(requests: RequestMetrics, taken: Snapshot, extra: Iterable[Collector] = ()) -> bytes:
    """The text of one scrape: the live request metrics and the database snapshot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(taken))
    for collector in (requests.registry, *extra):
        registry.register(_Forward(collector))
    return generate_latest(registry)


class _Forward(Collector):
    """A registry (or collector) inside another registry, so one scrape shows both."""

    def __init__(self, source: CollectorRegistry | Collector) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        yield from self.source.collect()
