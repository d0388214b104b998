"""Where user-given URLs the service fetches may point: webhooks (app.webhooks) and exporters'
destinations (export.mlflow's tracking_uri). One policy: http(s) only, no credentials in the
URL, and every address the host resolves to public unless the operator allows others.

Standard library only: the API checks webhook URLs with it, the worker checks again right
before each connection (a name can be re-pointed after it was checked).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


class RefusedAddress(ValueError):
    """The URL is malformed, or resolves to an address the service may not reach."""


def check_scheme(url: str, credentials_advice: str) -> None:
    """Absolute http(s) URL with a host and no user:password part (checked without DNS)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RefusedAddress("the url must be an absolute http:// or https:// URL")
    if parts.username or parts.password:
        raise RefusedAddress(f"the url must not carry credentials; {credentials_advice}")


def check_url(url: str, allow_private: bool, *, credentials_advice: str, purpose: str, setting: str) -> None:
    """``check_scheme``, then every address the host resolves to must be public unless
    ``allow_private``. ``purpose`` and ``setting`` word the refusal ("webhooks go to public
    addresses (LATHE_..._ALLOW_PRIVATE=true allows others)")."""
    check_scheme(url, credentials_advice)
    parts = urlsplit(url)
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
                f"address; {purpose} go to public addresses ({setting}=true allows others)")
