"""KSeF error responses in their documented shapes (PROTOCOL.md §10.1, openapi.json components).

Handlers raise these exceptions; `error_middleware` in app.py renders them:
400 as ExceptionResponse, or as problem+json when the request carries
`X-Error-Format: problem-details`; 401, 403 and 410 always as problem+json; 429 with Retry-After.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from aiohttp import web

# exceptionDescription texts as KSeF words them (openapi.json 400 descriptions).
DESCRIPTIONS: dict[int, str] = {
    9101: "Nieprawidłowy dokument.",
    9102: "Brak podpisu.",
    9103: "Przekroczona liczba dozwolonych podpisów.",
    9105: "Nieprawidłowy podpis.",
    21001: "Nieczytelna treść.",
    21111: "Nieprawidłowe wyzwanie autoryzacyjne.",
    21115: "Nieprawidłowy certyfikat.",
    21117: "Nieprawidłowy identyfikator podmiotu dla wskazanego typu kontekstu.",
    21155: "Przekroczono dozwoloną liczbę faktur w sesji.",
    21157: "Nieprawidłowy rozmiar części pakietu.",
    21161: "Przekroczono dozwoloną liczbę części pakietu.",
    21164: "Faktura o podanym identyfikatorze nie istnieje.",
    21165: "Faktura o podanym numerze KSeF nie jest jeszcze dostępna.",
    21166: "Korekta techniczna niedostępna.",
    21167: "Status faktury nie pozwala na korektę techniczną.",
    21173: "Brak sesji o wskazanym numerze referencyjnym.",
    21175: "Wynik zapytania o podanym identyfikatorze nie istnieje.",
    21178: "Nie znaleziono UPO dla podanych kryteriów.",
    21180: "Status sesji nie pozwala na wykonanie operacji.",
    21181: "Nieprawidłowe żądanie eksportu faktur.",
    21182: "Osiągnięto limit trwających eksportów.",
    21183: "Zakres filtrowania wykracza poza dostępny zakres danych.",
    21184: "Sesja tymczasowo niedostępna.",
    21205: "Pakiet nie może być pusty.",
    21208: "Czas oczekiwania na requesty upload lub finish został przekroczony.",
    21217: "Nieprawidłowe kodowanie znaków.",
    21301: "Brak autoryzacji.",
    21304: "Brak uwierzytelnienia.",
    21308: "Próba wykorzystania metod autoryzacyjnych osoby zmarłej.",
    21401: "Dokument nie jest zgodny ze schemą (xsd).",
    21402: "Nieprawidłowy rozmiar pliku.",
    21403: "Nieprawidłowy skrót pliku.",
    21405: "Błąd walidacji danych wejściowych.",
    21406: "Konflikt podpisu i typu uwierzytelnienia.",
    21418: "Przekazany token kontynuacji ma nieprawidłowy format.",
    21470: "Przesłany identyfikator klucza jest nieznany lub wskazuje na wycofany klucz.",
    # Certificates (openapi.json 400 tables of /certificates/*).
    25001: "Brak możliwości pobrania danych do CSR dla wykorzystanego sposobu uwierzytelnienia.",
    25002: "Brak możliwości złożenia wniosku certyfikacyjnego dla wykorzystanego sposobu uwierzytelnienia.",
    25003: "Dane w CSR nie zgadzają się z danymi w użytym wektorze uwierzytelniającym.",
    25004: "Niepoprawny format CSR lub niepoprawny podpis CSR.",
    25005: "Wniosek certyfikacyjny o podanym numerze referencyjnym nie istnieje.",
    25006: "Osiągnięto limit możliwych do złożenia wniosków certyfikacyjnych.",
    25007: "Osiągnięto limit dopuszczalnej liczby posiadanych certyfikatów.",
    25008: "Certyfikat o podanym numerze seryjnym nie istnieje.",
    25009: "Nie można odwołać wskazanego certyfikatu, ponieważ jest już odwołany, zablokowany lub nieważny.",
    25010: "Nieprawidłowy typ lub długość klucza.",
    25011: "Nieprawidłowy algorytm podpisu CSR.",
    26001: "Nie można nadać tokenowi uprawnień których nie posiadasz.",
    26002: "Nie można wygenerować tokena dla obecnego typu kontekstu.",
    30001: "Podmiot lub uprawnienie już istnieje.",
}


class ApiError(Exception):
    status = 500

    def render(self, request: web.Request, now: str) -> web.Response:
        raise NotImplementedError


class KsefException(ApiError):
    """A 400 with one or more exception codes."""

    status = 400

    def __init__(self, code: int, details: list[str] | None = None, description: str | None = None) -> None:
        self.errors = [(code, description or DESCRIPTIONS.get(code, "Błąd."), list(details or []))]
        super().__init__(f"{code}: {self.errors[0][1]} {details or ''}")

    @property
    def code(self) -> int:
        return self.errors[0][0]

    def render(self, request: web.Request, now: str) -> web.Response:
        trace = secrets.token_hex(16)
        if request.headers.get("X-Error-Format", "").lower() == "problem-details":
            body: dict[str, Any] = {
                "title": "Bad Request",
                "status": 400,
                "instance": request.path,
                "detail": "; ".join(desc for _, desc, _ in self.errors),
                "errors": [{"code": c, "description": d, "details": det} for c, d, det in self.errors],
                "timestamp": now,
                "traceId": trace,
            }
            return _json(400, body, "application/problem+json")
        body = {
            "exception": {
                "exceptionDetailList": [
                    {"exceptionCode": c, "exceptionDescription": d, "details": det or None}
                    for c, d, det in self.errors
                ],
                # referenceNumber is omitted: openapi-core rejects null next to allOf (ExceptionInfo).
                "serviceCode": f"00-{trace}-{secrets.token_hex(8)}-00",
                "serviceCtx": "srvKSEFSIM",
                "serviceName": request.path,
                "timestamp": now,
            }
        }
        return _json(400, body, "application/json")


class Unauthorized(ApiError):
    status = 401

    def __init__(self, detail: str = "Wymagane jest uwierzytelnienie.") -> None:
        self.detail = detail
        super().__init__(detail)

    def render(self, request: web.Request, now: str) -> web.Response:
        body = {"title": "Unauthorized", "status": 401, "detail": self.detail, "instance": request.path,
                "traceId": secrets.token_hex(16), "timestamp": now}
        return _json(401, body, "application/problem+json")


class Forbidden(ApiError):
    status = 403

    def __init__(self, reason_code: str, detail: str, security: dict[str, Any] | None = None) -> None:
        self.reason_code = reason_code
        self.detail = detail
        self.security = security
        super().__init__(f"{reason_code}: {detail}")

    def render(self, request: web.Request, now: str) -> web.Response:
        body: dict[str, Any] = {"title": "Forbidden", "status": 403, "detail": self.detail,
                                "instance": request.path, "reasonCode": self.reason_code,
                                "traceId": secrets.token_hex(16), "timestamp": now}
        if self.security is not None:
            body["security"] = self.security
        return _json(403, body, "application/problem+json")


class Gone(ApiError):
    status = 410

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)

    def render(self, request: web.Request, now: str) -> web.Response:
        body = {"title": "Gone", "status": 410, "instance": request.path, "detail": self.detail,
                "timestamp": now, "traceId": secrets.token_hex(16)}
        return _json(410, body, "application/problem+json")


class TooManyRequests(ApiError):
    status = 429

    def __init__(self, retry_after: int, details: list[str]) -> None:
        self.retry_after = max(1, int(retry_after))
        self.details = details
        super().__init__(f"429 retry after {self.retry_after}s")

    def render(self, request: web.Request, now: str) -> web.Response:
        headers = {"Retry-After": str(self.retry_after)}
        if request.headers.get("X-Error-Format", "").lower() == "problem-details":
            body: dict[str, Any] = {"title": "Too Many Requests", "status": 429, "instance": request.path,
                                    "detail": " ".join(self.details), "timestamp": now,
                                    "traceId": secrets.token_hex(16)}
            return _json(429, body, "application/problem+json", headers)
        body = {"status": {"code": 429, "description": "Too Many Requests", "details": self.details}}
        return _json(429, body, "application/json", headers)


def _json(status: int, body: dict[str, Any], content_type: str,
          headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=json.dumps(body, ensure_ascii=False).encode(),
                        content_type=content_type, charset="utf-8", headers=headers)
