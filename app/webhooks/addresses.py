"""Where webhooks may point: checked at creation and again before every attempt."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


class RefusedAddress(ValueError):
    """The URL is malformed, or resolves to an address webhooks may not reach."""


def check_url(url: str, allow_private: bool) -> None:
    """http(s) only; every address the host resolves to must be public unless ``allow_private``
    (a tenant must not make the workers probe the service's own network). Checked at creation
    and again before every attempt: a name can be re-pointed after it was checked."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RefusedAddress("the url must be an absolute http:// or https:// URL")
    if parts.username or parts.password:
        raise RefusedAddress("the url must not carry credentials; authenticate deliveries with their signature")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (OSError, ValueError) as exc:
        raise RefusedAddress(f"cannot resolve {parts.hostname!r} ({exc})") from None
    if allow_private:
        return
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global or address.is_multicast:
            raise RefusedAddress(
                f"{parts.hostname!r} resolves to {address}, a loopback, private, link-local or reserved "
                "address; webhooks go to public addresses (LATHE_WEBHOOK_ALLOW_PRIVATE=true allows others)")
