"""The KSeF API 2.0 client: `from ksefd.ksef import KsefClient, KsefContext, ...`.

This is the client's public API, what the daemon, the CLI and the demo use; everything else in the package's
modules is an implementation detail that may change. It imports nothing from the daemon, the store, the
invoice checks or the simulator (DESIGN.md, layers).

    errors       the typed hierarchy of everything that can go wrong (KsefError and its subclasses)
    client       KsefClient (one per environment) and KsefContext (one per context identifier)
    auth, credentials, environments
                 who logs in (KSeF token, certificate) and where (TEST, DEMO, PRD or a custom URL)
    certificates, key_files
                 KSeF certificates: enrollment, renewal, revocation, and their encrypted key files
    online, batch, batch_archive
                 sending invoices in online and batch sessions
    receiving, export, export_package
                 receiving: the metadata query, downloads and exports with their checkpoints
    ratelimit    the client-side limiter that keeps inside KSeF's rate limits
    models, crypto, qr
                 the answers' shapes, hashing, and the verification links and QR codes
    latarnia     KSeF's public status service (PROTOCOL.md §1)
"""

from . import key_files, qr
from .auth import ContextIdentifier, Credentials
from .batch import IN_PROGRESS, BatchOptions, BatchSender, OpenedBatch
from .batch_archive import ZIP, BatchBuildError, BatchInvoice, PreparedBatch, prepare_batch_async
from .certificates import (
    CertificateManager,
    CertificateType,
    EnrollmentFailed,
    EnrollmentPending,
    PrivateKey,
    build_csr,
    new_key,
    public_key_der,
)
from .client import KsefClient, KsefContext
from .credentials import (
    CertificateCredentials,
    KsefToken,
    clean_token_text,
    load_certificate,
    load_certificates,
    load_pkcs12,
    load_private_key,
)
from .crypto import sha256_b64
from .environments import Environment, environment
from .errors import (
    ApiError,
    AuthenticationFailed,
    AuthenticationPending,
    CredentialsError,
    Forbidden,
    Gone,
    KsefError,
    KsefException,
    OutcomeUnknown,
    ProtocolError,
    RateLimited,
    ServerError,
    TransportError,
    Unauthorized,
    UnreadableRequest,
)
from .export import Exporter, ExportFailed, ExportOptions, ExportPackage, StartedExport
from .export_package import next_checkpoint
from .latarnia import LatarniaClient, LatarniaStatus, LatarniaUnavailable, Message, default_url
from .models import ContextLimits, SessionInvoice, SessionStatus
from .online import FA3, OnlineOptions, OnlineSender, OnlineSession
from .permissions import personal_permissions, token_permissions
from .qr import certificate_serial_hex
from .ratelimit import RateLimiter, adopt_server_limits
from .receiving import (
    KSEF_NUMBER_RE,
    MAX_WINDOW,
    Receiver,
    check_ksef_number,
    format_instant,
    parse_instant,
    query_filters,
)
from .transport import Exchange, RequestObserver, RetryPolicy, Transport

__all__ = [
    "FA3",
    "IN_PROGRESS",
    "KSEF_NUMBER_RE",
    "MAX_WINDOW",
    "ZIP",
    "ApiError",
    "AuthenticationFailed",
    "AuthenticationPending",
    "BatchBuildError",
    "BatchInvoice",
    "BatchOptions",
    "BatchSender",
    "CertificateCredentials",
    "CertificateManager",
    "CertificateType",
    "ContextIdentifier",
    "ContextLimits",
    "Credentials",
    "CredentialsError",
    "EnrollmentFailed",
    "EnrollmentPending",
    "Environment",
    "Exchange",
    "ExportFailed",
    "ExportOptions",
    "ExportPackage",
    "Exporter",
    "Forbidden",
    "Gone",
    "KsefClient",
    "KsefContext",
    "KsefError",
    "KsefException",
    "KsefToken",
    "LatarniaClient",
    "LatarniaStatus",
    "LatarniaUnavailable",
    "Message",
    "OnlineOptions",
    "OnlineSender",
    "OnlineSession",
    "OpenedBatch",
    "OutcomeUnknown",
    "PreparedBatch",
    "PrivateKey",
    "ProtocolError",
    "RateLimited",
    "RateLimiter",
    "Receiver",
    "RequestObserver",
    "RetryPolicy",
    "ServerError",
    "SessionInvoice",
    "SessionStatus",
    "StartedExport",
    "Transport",
    "TransportError",
    "Unauthorized",
    "UnreadableRequest",
    "adopt_server_limits",
    "build_csr",
    "certificate_serial_hex",
    "check_ksef_number",
    "clean_token_text",
    "default_url",
    "environment",
    "format_instant",
    "key_files",
    "load_certificate",
    "load_certificates",
    "load_pkcs12",
    "load_private_key",
    "new_key",
    "next_checkpoint",
    "parse_instant",
    "personal_permissions",
    "prepare_batch_async",
    "public_key_der",
    "qr",
    "query_filters",
    "sha256_b64",
    "token_permissions",
]
