"""msgspec structs for the KSeF answers the client reads (openapi.json components; unknown fields ignored).

Field names are snake_case here and camelCase on the wire (`rename="camel"`). Optional fields default to
None, since KSeF omits or nulls them freely.
"""

from __future__ import annotations

import datetime as dt

import msgspec


class Model(msgspec.Struct, rename="camel"):
    pass


class TokenInfo(Model):
    token: str
    valid_until: dt.datetime

    def __repr__(self) -> str:          # never print a bearer token
        return f"TokenInfo(token=<{len(self.token)} chars>, valid_until={self.valid_until.isoformat()})"


class Challenge(Model):
    challenge: str
    timestamp: dt.datetime
    timestamp_ms: int
    client_ip: str | None = None


class AuthenticationInit(Model):
    reference_number: str
    authentication_token: TokenInfo


class StatusInfo(Model):
    code: int
    description: str
    details: list[str] | None = None
    extensions: dict[str, str | None] | None = None


class AuthenticationMethodInfo(Model):
    category: str
    code: str
    display_name: str = ""


class AuthenticationStatus(Model):
    start_date: dt.datetime
    status: StatusInfo
    authentication_method: str | None = None
    authentication_method_info: AuthenticationMethodInfo | None = None
    is_token_redeemed: bool | None = None
    last_token_refresh_date: dt.datetime | None = None
    refresh_token_valid_until: dt.datetime | None = None


class AuthenticationTokens(Model):
    access_token: TokenInfo
    refresh_token: TokenInfo


class RefreshedAccessToken(Model):
    access_token: TokenInfo


class PublicKeyCertificate(Model):
    certificate: str                 # base64 DER
    certificate_id: str
    public_key_id: str
    valid_from: dt.datetime
    valid_to: dt.datetime
    usage: list[str]


class OpenOnlineSessionResponse(Model):
    reference_number: str
    valid_until: dt.datetime


class SendInvoiceResponse(Model):
    reference_number: str


class UpoPage(Model):
    reference_number: str
    download_url: str
    download_url_expiration_date: dt.datetime


class Upo(Model):
    pages: list[UpoPage]


class SessionStatus(Model):
    status: StatusInfo
    date_created: dt.datetime
    date_updated: dt.datetime
    valid_until: dt.datetime | None = None
    upo: Upo | None = None
    invoice_count: int | None = None
    successful_invoice_count: int | None = None
    failed_invoice_count: int | None = None


class SessionInvoice(Model):
    """One invoice of a session (SessionInvoiceStatusResponse, PROTOCOL.md §4.5)."""

    ordinal_number: int
    reference_number: str
    invoice_hash: str
    invoicing_date: dt.datetime
    status: StatusInfo
    invoice_number: str | None = None
    ksef_number: str | None = None
    invoice_file_name: str | None = None
    acquisition_date: dt.datetime | None = None
    permanent_storage_date: dt.datetime | None = None
    upo_download_url: str | None = None
    upo_download_url_expiration_date: dt.datetime | None = None
    invoicing_mode: str | None = None

    @property
    def is_final(self) -> bool:
        return self.status.code >= 200

    @property
    def is_accepted(self) -> bool:
        return self.status.code == 200


class SessionInvoicesPage(Model):
    invoices: list[SessionInvoice]
    continuation_token: str | None = None


class ContextSessionLimits(Model):
    max_invoices: int
    max_invoice_size_in_mb: int = msgspec.field(name="maxInvoiceSizeInMB", default=1)
    max_invoice_with_attachment_size_in_mb: int = msgspec.field(name="maxInvoiceWithAttachmentSizeInMB", default=3)


class CollectiveIdentifierLimits(Model):
    max_invoices: int                  # the most invoices in one collective identifier (2.7.1, PROTOCOL.md §14.5)


class ContextLimits(Model):
    """GET /limits/context (EffectiveContextLimits). `collective_identifier` is required since 2.7.1; read
    leniently (None when missing) because the daemon does not depend on it (§14.7 point 5)."""

    online_session: ContextSessionLimits
    batch_session: ContextSessionLimits
    collective_identifier: CollectiveIdentifierLimits | None = None
