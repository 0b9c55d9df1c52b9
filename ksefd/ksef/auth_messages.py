"""Words a person can act on for a failed authentication (status codes of PROTOCOL.md §3.4).

KSeF's own description and details are always kept at the end, so nothing it said is lost.
"""

from __future__ import annotations

from ksefd.i18n import N_

from .environments import Environment
from .texts import Words, said

_TOKEN_ENV = N_("KSeF tokens work only in the environment that issued them: tokens from DEMO or TEST do not work "
                "on PROD, and PROD tokens do not work on DEMO or TEST")


def _has(text: str, *needles: str) -> bool:
    return any(n in text for n in needles)


def _token_failure(detail: str, context: str, environment: Environment, token_context: str) -> Words:
    low = detail.lower()
    if _has(low, "kontek", "context"):
        if token_context:
            return said(N_("the KSeF token cannot be used in context {context} (it was issued for {issued}); use a "
                           "token generated in that context, or authenticate into the context the token belongs "
                           "to"), context=context, issued=token_context)
        return said(N_("the KSeF token cannot be used in context {context}; use a token generated in that context, "
                       "or authenticate into the context the token belongs to"), context=context)
    if _has(low, "unieważ", "uniewaz", "revok"):
        return said(N_("the KSeF token was revoked; generate a new token in the KSeF web app ({environment})"),
                    environment=environment.label)
    if _has(low, "nieaktyw", "inactive"):
        return said(N_("the KSeF token is not active (still pending, or its activation failed); wait a minute and "
                       "retry, or check its status in the KSeF web app"))
    if _has(low, "wyzwan", "challenge"):
        return said(N_("the authentication challenge was rejected (expired or used); a new authentication will get "
                       "a new one"))
    if _has(low, "czas", "time"):
        return said(N_("the token timestamp was rejected; check that this machine's clock is right"))
    if _has(low, "szyfr", "encrypt", "kodowan", "encod"):
        return said(N_("the encrypted token could not be read by KSeF; check that the whole token was copied"))
    hint = said(_TOKEN_ENV)
    if environment.is_production:
        hint = said(N_("DEMO and TEST tokens do not work on PROD: generate the token in the PROD KSeF web app"))
    # The environments' rule is said once (issue #14 point 5: it used to follow itself in parentheses).
    return said(N_("KSeF did not accept the token (wrong token) for {environment}. Check that it was copied whole, "
                   "that it was not deleted, and where it comes from: {hint}."), environment=environment.label,
                hint=hint)


def _certificate_failure(detail: str, identity: str, environment: Environment) -> Words:
    low = detail.lower()
    if _has(low, "łańcuch", "lancuch", "chain"):
        where = (said(N_("self-signed certificates are accepted only on TEST")) if environment.name != "test"
                 else said(N_("verifyCertificateChain was requested, which checks the chain even on TEST")))
        return said(N_("the certificate of {identity} was rejected: its chain cannot be verified or is not "
                       "trusted; {where}. Use a qualified certificate or a KSeF certificate of type Authentication"),
                    identity=identity, where=where)
    if _has(low, "unieważ", "uniewaz", "odwoła", "odwola", "revok", "zawiesz", "suspend"):
        # "Certyfikat odwołany" is the wording of the OA status table (PROTOCOL.md §3.4).
        return said(N_("the certificate of {identity} is revoked or suspended; get a new certificate (a KSeF one: "
                       "`ksefd certificate enroll COMPANY --type authentication` with another signature)"),
                    identity=identity)
    return said(N_("the certificate of {identity} was rejected as invalid (expired, not yet valid, or unusable for "
                   "authentication); check its validity dates and that it is an Authentication certificate"),
                identity=identity)


def explain(code: int, description: str, details: list[str], *, context: str, identity: str,
            environment: Environment, token_context: str = "") -> Words:
    """The message of AuthenticationFailed for status `code` (texts.py); KSeF's own words end it untranslated."""
    detail = "; ".join(details)
    ksef_words = f"[KSeF {code}: {description}{(' - ' + detail) if detail else ''}]"
    if code == 415:
        text = said(N_("no permission in context {context}: {identity} authenticated but holds no permission "
                       "there; grant one (e.g. InvoiceWrite or InvoiceRead) in the KSeF web app or by ZAW-FA, or "
                       "check the NIP"), context=context, identity=identity)
    elif code == 425:
        text = said(N_("the authentication was revoked by the user; authenticate again"))
    elif code == 450:
        text = _token_failure(detail, context, environment, token_context)
    elif code == 460:
        text = _certificate_failure(detail, identity, environment)
    elif code == 470:
        text = said(N_("{identity} belongs to a deceased person; these credentials cannot be used any more"),
                    identity=identity)
    elif code == 480:
        text = said(N_("authentication into context {context} is blocked after a suspected security incident; "
                       "contact the Ministry of Finance"), context=context)
    elif code in (500, 550):
        text = said(N_("KSeF could not finish the authentication; it will be retried"))
    else:
        text = said(N_("authentication into context {context} failed"), context=context)
    return said(N_("{text} {ksef}"), text=text, ksef=ksef_words)
