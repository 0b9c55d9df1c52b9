"""The authorizationPolicy.allowedIps check (PROTOCOL.md §3.5): a call from an address outside the
policy given at authentication gets 403 problem+json `ip-not-allowed` with `security.clientIp`."""

from __future__ import annotations

import ipaddress
from typing import Any

from .errors import Forbidden


def _allowed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, policy: dict[str, Any]) -> bool:
    for address in policy.get("ip4Addresses") or []:
        if ip == ipaddress.ip_address(address):
            return True
    for text in policy.get("ip4Ranges") or []:
        low, high = (ipaddress.ip_address(part.strip()) for part in str(text).partition("-")[::2])
        if low.version == high.version == ip.version and int(low) <= int(ip) <= int(high):
            return True
    return any(ip in ipaddress.ip_network(str(mask), strict=False) for mask in policy.get("ip4Masks") or [])


def check_client_ip(policy: dict[str, Any] | None, client_ip: str) -> None:
    """Raise 403 ip-not-allowed unless `client_ip` fits `policy` (None or empty: any address)."""
    if not policy or not any(policy.get(k) for k in ("ip4Addresses", "ip4Ranges", "ip4Masks")):
        return
    try:
        ip = ipaddress.ip_address(client_ip)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if _allowed(ip, policy):
            return
    except ValueError:
        pass
    raise Forbidden("ip-not-allowed", "Żądanie pochodzi z adresu IP innego niż wskazany podczas uwierzytelniania.",
                    {"clientIp": client_ip})
