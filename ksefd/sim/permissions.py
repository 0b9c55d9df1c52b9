"""Who may do what in which context: the TEST data (persons, subjects, ZAW-FA-like grants, attachment
consents, blocked contexts) and the resolution of a subject's permissions in a context (PROTOCOL.md §9.2,
§11). Route handlers in testdata.py write here; auth.py and tokens.py read here; online sessions read
`attachments_allowed`.
"""

from __future__ import annotations

from typing import Any

from .store import Record, Store

PERSONS = "test_persons"                 # key: NIP
SUBJECTS = "test_subjects"               # key: subjectNip
GRANTS = "permission_grants"             # key: grant_key(context, authorized)
ATTACHMENTS = "attachment_consents"      # key: NIP
BLOCKED = "blocked_contexts"             # key: "type:value"

# Owner is never granted; it implies these (PROTOCOL.md §9.2; EnforcementOperations only for bailiffs).
OWNER_IMPLIED = ("InvoiceRead", "InvoiceWrite", "CredentialsRead", "CredentialsManage", "Introspection",
                 "SubunitManage")

Identity = tuple[str, str]               # (Nip | Pesel | Fingerprint, value)


def normalize(id_type: str, value: str) -> str:
    # [INFER] PROTOCOL.md §3.3: the fingerprint's letter case is unspecified, so compare case-insensitively.
    return value.strip().upper() if id_type == "Fingerprint" else value.strip()


def grant_key(context_type: str, context_value: str, id_type: str, id_value: str) -> str:
    return f"{context_type}:{context_value}|{id_type}:{normalize(id_type, id_value)}"


def identities(store: Store, id_type: str, id_value: str) -> set[Identity]:
    """The subject's identifiers, with the NIP<->PESEL link of a TEST person (PROTOCOL.md §11: "the person
    can log in with the PESEL or the NIP")."""
    found: set[Identity] = {(id_type, normalize(id_type, id_value))}
    person = person_of(store, id_type, id_value)
    if person is not None:
        found |= {("Nip", person["nip"]), ("Pesel", person["pesel"])}
    return found


def person_of(store: Store, id_type: str, id_value: str) -> Record | None:
    if id_type == "Nip":
        return store.get(PERSONS, id_value)
    if id_type == "Pesel":
        return next((p for p in store.values(PERSONS) if p["pesel"] == id_value), None)
    return None


def is_deceased(store: Store, id_type: str, id_value: str) -> bool:
    person = person_of(store, id_type, id_value)
    return bool(person and person.get("isDeceased"))


def _context_nip(context_type: str, context_value: str) -> str | None:
    if context_type == "Nip":
        return context_value
    if context_type == "InternalId":
        # [INFER] an internal identifier `NIP-nnnnn` belongs to that NIP's entity; its owner administers it.
        return context_value.split("-", 1)[0]
    return None


def is_owner(store: Store, context_type: str, context_value: str, ids: set[Identity]) -> bool:
    # [INFER] On TEST anyone may authenticate for any NIP with a self-signed certificate (PROTOCOL.md §1, §11),
    # which works only if a subject whose NIP (serialNumber TINPL or organizationIdentifier VATPL) equals the
    # context NIP is treated as that context's owner. A TEST person created for the NIP is owner too, also
    # when authenticated by PESEL (the NIP<->PESEL link in `identities`).
    nip = _context_nip(context_type, context_value)
    return nip is not None and ("Nip", nip) in ids


def owner_permissions(store: Store, context_type: str, context_value: str, ids: set[Identity]) -> list[str]:
    """What the subject may do as the context's Owner (2.9.0 `ownerPermissions`, PROTOCOL.md §15), or []."""
    if not is_owner(store, context_type, context_value, ids):
        return []
    found = set(OWNER_IMPLIED)
    nip = _context_nip(context_type, context_value) or ""
    person = store.get(PERSONS, nip)
    if person is not None and person.get("isBailiff"):
        found.add("EnforcementOperations")       # PROTOCOL.md §11: isBailiff=true adds it
    subject = store.get(SUBJECTS, nip)
    if subject is not None and subject.get("subjectType") == "EnforcementAuthority":
        found.add("EnforcementOperations")       # [INFER] an enforcement authority's owner enforces
    return sorted(found)


def effective_permissions(store: Store, context_type: str, context_value: str,
                          id_type: str, id_value: str) -> set[str]:
    """The permissions the subject holds in the context right now."""
    ids = identities(store, id_type, id_value)
    found: set[str] = set(owner_permissions(store, context_type, context_value, ids))
    for kind, value in ids:
        grant = store.get(GRANTS, grant_key(context_type, context_value, kind, value))
        if grant is not None:
            found.update(grant["permissions"])
    return found


def grant(store: Store, context: dict[str, str], authorized: dict[str, str], permissions: list[str],
          start_date: str = "", descriptions: dict[str, str] | None = None) -> None:
    key = grant_key(context["type"], context["value"], authorized["type"], authorized["value"])
    current = store.get(GRANTS, key) or {"contextIdentifier": dict(context), "authorizedIdentifier": {
        "type": authorized["type"], "value": normalize(authorized["type"], authorized["value"])}, "permissions": [],
        "startDate": start_date}
    current["permissions"] = sorted(set(current["permissions"]) | set(permissions))
    current["descriptions"] = {**current.get("descriptions", {}), **(descriptions or {})}
    store.put(GRANTS, key, current)


def revoke(store: Store, context: dict[str, str], authorized: dict[str, str]) -> None:
    store.delete(GRANTS, grant_key(context["type"], context["value"], authorized["type"], authorized["value"]))


def attachments_allowed(store: Store, nip: str) -> bool:
    """Whether the NIP may send invoices with attachments (POST /testdata/attachment; PROTOCOL.md §11)."""
    record = store.get(ATTACHMENTS, nip)
    return bool(record and record.get("allowed"))


def set_attachments(store: Store, nip: str, allowed: bool, details: dict[str, Any] | None = None) -> None:
    store.put(ATTACHMENTS, nip, {"nip": nip, "allowed": allowed, **(details or {})})


def context_key(context_type: str, context_value: str) -> str:
    return f"{context_type}:{context_value}"


def is_blocked(store: Store, context_type: str, context_value: str) -> bool:
    return store.get(BLOCKED, context_key(context_type, context_value)) is not None
