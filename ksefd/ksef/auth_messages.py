"""Words a person can act on for a failed authentication (status codes of PROTOCOL.md §3.4).

KSeF's own description and details are always kept at the end, so nothing it said is lost.
"""

from __future__ import annotations

from .environments import Environment

_TOKEN_ENV = ("KSeF tokens work only in the environment that issued them: tokens from DEMO or TEST do not work on "
              "PROD, and PROD tokens do not work on DEMO or TEST")


def _has(text: str, *needles: str) -> bool:
    return any(n in text for n in needles)


def _token_failure(detail: str, context: str, environment: Environment, token_context: str) -> str:
    low = detail.lower()
    if _has(low, "kontek", "context"):
        issued = f" (it was issued for {token_context})" if token_context else ""
        return (f"the KSeF token cannot be used in context {context}{issued}; use a token generated in that "
                f"context, or authenticate into the context the token belongs to")
    if _has(low, "unieważ", "uniewaz", "revok"):
        return f"the KSeF token was revoked; generate a new token in the KSeF web app ({environment.label})"
    if _has(low, "nieaktyw", "inactive"):
        return ("the KSeF token is not active (still pending, or its activation failed); wait a minute and retry, "
                "or check its status in the KSeF web app")
    if _has(low, "wyzwan", "challenge"):
        return "the authentication challenge was rejected (expired or used); a new authentication will get a new one"
    if _has(low, "czas", "time"):
        return "the token timestamp was rejected; check that this machine's clock is right"
    if _has(low, "szyfr", "encrypt", "kodowan", "encod"):
        return "the encrypted token could not be read by KSeF; check that the whole token was copied"
    hint = _TOKEN_ENV
    if environment.is_production:
        hint = "DEMO and TEST tokens do not work on PROD: generate the token in the PROD KSeF web app"
    # The environments' rule is said once (issue #14 point 5: it used to follow itself in parentheses).
    return (f"KSeF did not accept the token (wrong token) for {environment.label}. Check that it was copied whole, "
            f"that it was not deleted, and where it comes from: {hint}.")


def _certificate_failure(detail: str, identity: str, environment: Environment) -> str:
    low = detail.lower()
    if _has(low, "łańcuch", "lancuch", "chain"):
        where = ("self-signed certificates are accepted only on TEST" if environment.name != "test"
                 else "verifyCertificateChain was requested, which checks the chain even on TEST")
        return (f"the certificate of {identity} was rejected: its chain cannot be verified or is not trusted; "
                f"{where}. Use a qualified certificate or a KSeF certificate of type Authentication")
    if _has(low, "unieważ", "uniewaz", "odwoła", "odwola", "revok", "zawiesz", "suspend"):
        # "Certyfikat odwołany" is the wording of the OA status table (PROTOCOL.md §3.4).
        return (f"the certificate of {identity} is revoked or suspended; get a new certificate (a KSeF one: "
                f"`ksefd certificate enroll COMPANY --type authentication` with another signature)")
    return (f"the certificate of {identity} was rejected as invalid (expired, not yet valid, or unusable for "
            f"authentication); check its validity dates and that it is an Authentication certificate")


def explain(code: int, description: str, details: list[str], *, context: str, identity: str,
            environment: Environment, token_context: str = "") -> str:
    """The message of AuthenticationFailed for status `code`."""
    detail = "; ".join(details)
    ksef_words = f" [KSeF {code}: {description}{(' - ' + detail) if detail else ''}]"
    if code == 415:
        text = (f"no permission in context {context}: {identity} authenticated but holds no permission there; "
                f"grant one (e.g. InvoiceWrite or InvoiceRead) in the KSeF web app or by ZAW-FA, or check the NIP")
    elif code == 425:
        text = "the authentication was revoked by the user; authenticate again"
    elif code == 450:
        text = _token_failure(detail, context, environment, token_context)
    elif code == 460:
        text = _certificate_failure(detail, identity, environment)
    elif code == 470:
        text = f"{identity} belongs to a deceased person; these credentials cannot be used any more"
    elif code == 480:
        text = (f"authentication into context {context} is blocked after a suspected security incident; "
                f"contact the Ministry of Finance")
    elif code in (500, 550):
        text = "KSeF could not finish the authentication; it will be retried"
    else:
        text = f"authentication into context {context} failed"
    return text + ksef_words
